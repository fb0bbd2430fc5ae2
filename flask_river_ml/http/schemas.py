"""Marshmallow schemas of every JSON payload the HTTP API accepts, and their precompiled loads.

Values that a model interprets (features, labels, predictions) are loaded as they are: a
label of ``0``, ``false`` or ``""`` is a real value, and only ``null`` or absence means "none".
Feature names are not validated one by one: JSON object keys are strings already, and a
per-key check would cost more than the rest of a learn.

The schemas say what a payload may hold. Every learn, predict and label loads one, and
marshmallow's load costs more than the rest of the view: a :class:`Loader` reads the schema's
fields once and checks a payload in one pass, and hands anything that is not plainly valid
to the schema itself, so every error is marshmallow's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, ValidationError, fields, missing, post_load, validates_schema

from ..payloads import Parsed


def identifier(value: Any) -> str | None:
    """A prediction's identifier as the API takes it: a non-empty string, or an integer,
    which addresses the record of its digits; None when ``value`` is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


class Identifier(fields.Field):
    """A prediction's identifier: a string, or an integer that addresses the same record."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        loaded = identifier(value)
        if loaded is None:
            raise ValidationError("Must be a non-empty string or an integer.")
        return loaded


class _Payload(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(required=True, metadata={"description": "the model's name"})
    #: Fields at least one of which must be given, not null; the error names the first.
    one_of: ClassVar[tuple[str, ...]] = ()
    one_of_message: ClassVar[str] = ""

    @validates_schema
    def _one_of(self, data: dict, **kwargs: Any) -> None:
        if self.one_of and all(data.get(name) is None for name in self.one_of):
            raise ValidationError(self.one_of_message, self.one_of[0])


class LearnSchema(_Payload):
    """POST learn: ``features`` are required unless an ``identifier`` names stored ones."""

    features = fields.Dict(load_default=None)
    ground_truth = fields.Raw(allow_none=True, load_default=None)
    prediction = fields.Raw(allow_none=True, load_default=None)
    identifier = Identifier(allow_none=True, load_default=None)
    one_of = ("features", "identifier")
    one_of_message = "Give the features, or the identifier of a stored prediction."


class PredictSchema(_Payload):
    features = fields.Dict(required=True)
    identifier = Identifier(allow_none=True, load_default=None)


class LabelSchema(_Payload):
    identifier = Identifier(required=True)
    label = fields.Raw(required=True, allow_none=False)


class ModelSchema(_Payload):
    """The model named in a query string, a form or a JSON body (metrics, stats, delete)."""


class Samples(fields.List):
    """A batch's samples: a JSON array of anything but null, loaded as it is, each sample read
    and checked by the service, which takes the same samples in process (a schema per sample
    would cost more than learning a small model from it).

    Loaded as :class:`~flask_river_ml.payloads.Parsed`: the views load only bodies that
    :func:`~flask_river_ml.payloads.parse_json` read and checked, so the service need not walk
    the samples' values again. Anything else goes through marshmallow's list of raw values,
    whose errors the API answers with."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.Raw(), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if type(value) is list and None not in value:
            # What the list of raw values loads, without a field's call for each sample.
            return Parsed(value)
        loaded: list[Any] = super()._deserialize(value, attr, data, **kwargs)
        return loaded


class LearnBatchSchema(_Payload):
    """POST learn/batch: each sample is ``{"features", "ground_truth"?, "prediction"?,
    "identifier"?}``."""

    samples = Samples(required=True)


#: The fields of a predict batch's sample.
_PREDICT_FIELDS = ("features", "identifier")
_PREDICT_KEYS = frozenset(_PREDICT_FIELDS)


class PredictBatchSchema(_Payload):
    """POST predict/batch: each sample is ``{"features", "identifier"?}``; loaded as the lists
    of ``features`` (:class:`~flask_river_ml.payloads.Parsed`, as the samples) and
    ``identifiers`` the service takes, as in process."""

    samples = Samples(required=True)

    @post_load
    def _split(self, data: dict, **kwargs: Any) -> dict:
        features, identifiers, errors = Parsed(), [], {}
        for index, sample in enumerate(data.pop("samples")):
            if not isinstance(sample, dict) or "features" not in sample:
                errors[str(index)] = ["A sample is an object with features, and an identifier if it has one."]
            elif not _PREDICT_KEYS.issuperset(sample):
                errors[str(index)] = [f"Unknown field: a sample holds {' and '.join(_PREDICT_FIELDS)} only."]
            else:
                features.append(sample["features"])
                identifiers.append(sample.get("identifier"))
        if errors:
            raise ValidationError({"samples": errors})
        return {**data, "features": features, "identifiers": identifiers}


#: A field's check of a value that is given and not null: the loaded value, or _INVALID.
_Check = Callable[[Any], Any]
_INVALID = object()
#: The checks of the field classes the schemas use (exact JSON types: a subclass, or anything
#: else, goes through marshmallow).
_CHECKS: dict[type[fields.Field], _Check] = {
    fields.String: lambda value: value if type(value) is str else _INVALID,
    fields.Dict: lambda value: value if type(value) is dict else _INVALID,
    fields.Raw: lambda value: value,
    Identifier: lambda value: _INVALID if (loaded := identifier(value)) is None else loaded,
}


class Loader:
    """``schema.load``, precompiled from the schema's declared fields.

    A payload with no unknown key, every required field, and each value given of the JSON
    type its field takes (or null where the field allows it) loads in one pass to exactly
    what the schema loads, except that a mapping is kept rather than copied. Any other
    payload is loaded by the schema, so its errors (and the messages the API answers with)
    are marshmallow's. The schemas served this way declare their rules in their fields and
    in :attr:`_Payload.one_of`; a field this cannot check is refused when the loader is built.
    """

    def __init__(self, schema: _Payload) -> None:
        self.schema = schema
        self.known = frozenset(schema.fields)
        self.one_of = schema.one_of
        plan = []
        for name, field in schema.fields.items():
            check = _CHECKS.get(type(field))
            default = field.load_default
            if check is None or field.validators or field.data_key or field.attribute or callable(default):
                raise TypeError(f"{type(schema).__name__}.{name}: a field the loader cannot check")
            plan.append((name, check, field.required, field.allow_none, default))
        self.plan = tuple(plan)

    def load(self, payload: dict[str, Any]) -> dict[str, Any]:
        """What the schema loads from ``payload``; marshmallow's ValidationError when invalid."""
        if payload.keys() <= self.known:
            loaded: dict[str, Any] = {}
            for name, check, required, allow_none, default in self.plan:
                value = payload.get(name, missing)
                if value is missing:
                    if required:
                        break
                    if default is missing:
                        continue
                    value = default
                elif value is None:
                    if not allow_none:
                        break
                elif (value := check(value)) is _INVALID:
                    break
                loaded[name] = value
            else:
                if not self.one_of or any(loaded.get(name) is not None for name in self.one_of):
                    return loaded
        loaded = self.schema.load(payload)
        return loaded  # type: ignore[return-value]

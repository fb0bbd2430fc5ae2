"""Marshmallow schemas of every JSON payload the HTTP API accepts.

Values that a model interprets (features, labels, predictions) are loaded as they are: a
label of ``0``, ``false`` or ``""`` is a real value, and only ``null`` or absence means "none".
Feature names are not validated one by one: JSON object keys are strings already, and a
per-key check would cost more than the rest of a learn.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validates_schema


class Identifier(fields.Field):
    """A prediction's identifier: a string, or an integer that addresses the same record."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value:
            return value
        raise ValidationError("Must be a non-empty string or an integer.")


class _Payload(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(required=True, metadata={"description": "the model's name"})


class LearnSchema(_Payload):
    """POST learn: ``features`` are required unless an ``identifier`` names stored ones."""

    features = fields.Dict(load_default=None)
    ground_truth = fields.Raw(allow_none=True, load_default=None)
    prediction = fields.Raw(allow_none=True, load_default=None)
    identifier = Identifier(allow_none=True, load_default=None)

    @validates_schema
    def _features_or_identifier(self, data: dict, **kwargs: Any) -> None:
        if data.get("features") is None and data.get("identifier") is None:
            raise ValidationError("Give the features, or the identifier of a stored prediction.", "features")


class PredictSchema(_Payload):
    features = fields.Dict(required=True)
    identifier = Identifier(allow_none=True, load_default=None)


class LabelSchema(_Payload):
    identifier = Identifier(required=True)
    label = fields.Raw(required=True, allow_none=False)


class ModelSchema(_Payload):
    """The model named in a query string, a form or a JSON body (metrics, stats, delete)."""


class LearnBatchSchema(_Payload):
    """POST learn/batch: each sample is ``{"features", "ground_truth"?, "prediction"?,
    "identifier"?}``, read and checked by the service, which takes the same samples in process
    (a schema per sample would cost more than learning a small model from it)."""

    samples = fields.List(fields.Raw(), required=True)


#: The fields of a predict batch's sample.
_PREDICT_FIELDS = ("features", "identifier")


class PredictBatchSchema(_Payload):
    """POST predict/batch: each sample is ``{"features", "identifier"?}``; loaded as the lists
    of ``features`` and ``identifiers`` the service takes, as in process."""

    samples = fields.List(fields.Raw(), required=True)

    @post_load
    def _split(self, data: dict, **kwargs: Any) -> dict:
        features, identifiers, errors = [], [], {}
        for index, sample in enumerate(data.pop("samples")):
            if not isinstance(sample, dict) or "features" not in sample:
                errors[str(index)] = ["A sample is an object with features, and an identifier if it has one."]
            elif any(key not in _PREDICT_FIELDS for key in sample):
                errors[str(index)] = [f"Unknown field: a sample holds {' and '.join(_PREDICT_FIELDS)} only."]
            else:
                features.append(sample["features"])
                identifiers.append(sample.get("identifier"))
        if errors:
            raise ValidationError({"samples": errors})
        return {**data, "features": features, "identifiers": identifiers}

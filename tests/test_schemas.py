"""The precompiled loads of the payload schemas load what marshmallow loads, and refuse what
it refuses with its own errors, over every combination of values a payload's fields may take."""

from __future__ import annotations

import itertools

import pytest
from marshmallow import ValidationError, fields

from flask_river_ml.http.schemas import LabelSchema, LearnSchema, Loader, ModelSchema, PredictSchema

#: Values a field may be given (absent included), of every JSON type and a few edge cases.
_ABSENT = object()
_VALUES = [_ABSENT, None, "", "m", 0, 7, True, False, 1.5, {}, {"a": 1.0}, [], [1], -(2**70)]


def _loaded(load, payload: dict):
    try:
        return "loaded", load(payload)
    except ValidationError as error:
        return "refused", error.messages


@pytest.mark.parametrize("schema", [LearnSchema(), PredictSchema(), LabelSchema(), ModelSchema()], ids=type)
def test_a_loader_loads_and_refuses_as_its_schema(schema):
    loader = Loader(schema)
    names = list(schema.fields)
    # Every field at every value would be 14**5 payloads for a learn: every field takes every
    # value with the others at each of a few, which reaches every branch of the loader.
    others = [_ABSENT, None, "m", {"a": 1.0}, 7]
    for field, value in itertools.product(names, _VALUES):
        for rest in itertools.product(others, repeat=len(names) - 1):
            given = dict(zip([name for name in names if name != field], rest, strict=True))
            given[field] = value
            payload = {name: item for name, item in given.items() if item is not _ABSENT}
            assert _loaded(loader.load, payload) == _loaded(schema.load, payload), payload
    for unknown in ({"model": "m", "other": 1}, {"other": None}):
        assert _loaded(loader.load, unknown) == _loaded(schema.load, unknown)


def test_a_loader_keeps_a_mapping_marshmallow_would_copy():
    features = {"x": 1.0}
    assert Loader(PredictSchema()).load({"model": "m", "features": features})["features"] is features


def test_a_loader_refuses_a_field_it_cannot_check():
    class Checked(ModelSchema):
        model = fields.String(validate=lambda name: bool(name))

    class Renamed(ModelSchema):
        model = fields.String(data_key="name")

    class Dated(ModelSchema):
        when = fields.DateTime()

    for schema in (Checked, Renamed, Dated):
        with pytest.raises(TypeError, match="cannot check"):
            Loader(schema())

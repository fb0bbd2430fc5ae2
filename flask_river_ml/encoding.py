"""Turning what models return into JSON.

Predictions and parameters come from models: dictionaries keyed by booleans or numbers,
numpy scalars, infinities. These helpers make them JSON without losing what they say, the way
``json.dumps`` names keys (``True`` -> ``"true"``) and the API names non-finite numbers.
"""

from __future__ import annotations

import inspect
import math
from typing import Any


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    return str(jsonable(key))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: str keys, lists, ints, finite floats or their names."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_key(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    # numpy scalars and arrays know their Python form.
    if hasattr(value, "tolist") and callable(value.tolist):
        return jsonable(value.tolist())
    return str(value)


def _params(value: Any) -> Any:
    if isinstance(value, dict):
        return {_key(key): _params(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_params(item) for item in value]
    if inspect.isclass(value):
        return value.__name__
    return jsonable(value)


def model_params(model: Any) -> dict[str, Any]:
    """The model's river parameters (``_get_params``) as JSON, nested estimators as
    ``[ClassName, {params}]``; a pipeline's top-level keys are its step names. ``{}`` for
    an object that is not a river estimator."""
    get_params = getattr(model, "_get_params", None)
    return _params(get_params()) if callable(get_params) else {}

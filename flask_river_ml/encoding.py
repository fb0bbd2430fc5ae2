"""Turning what models return into JSON.

Predictions and parameters come from models: dictionaries keyed by booleans or numbers,
numpy scalars, infinities. These helpers make them JSON without losing what they say, the way
``json.dumps`` names keys (``True`` -> ``"true"``) and the API names non-finite numbers.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import orjson

from .errors import INTERPRETER_EXITS, InvalidInput, RiverMLError


def json_bytes(value: Any, *, sort_keys: bool = True) -> bytes:
    """``value``, made of plain JSON types (:func:`jsonable`'s), as compact UTF-8 JSON with
    its keys sorted unless told otherwise: written by orjson, or by the standard library for
    an integer beyond 64 bits, which orjson cannot write."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False).encode()


def json_key(key: Any) -> str:
    """The string a dictionary key becomes in the server's JSON: ``True`` -> ``"true"``,
    ``1`` -> ``"1"``, ``None`` -> ``"null"``, a string as it is."""
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
        # numpy's float64 is a float, but not one that every JSON writer takes.
        if not math.isfinite(value):
            return str(value)
        return value if type(value) is float else float(value)
    if isinstance(value, dict):
        return {json_key(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    # numpy scalars and arrays know their Python form.
    if hasattr(value, "tolist") and callable(value.tolist):
        return jsonable(value.tolist())
    return str(value)


#: The most values (containers and scalars) the JSON of a model's parameters may hold.
MAX_PARAM_ITEMS = 100_000
#: The most characters its strings may hold together.
MAX_PARAM_CHARS = 4_000_000
#: How deep its containers may nest.
MAX_PARAM_DEPTH = 64


class _Walk:
    """Turns ``_get_params`` output into JSON within a budget of items, characters and depth:
    an uploaded model may hold a list that refers to itself, or shares one list a million
    times over, which a plain walk would expand for minutes or forever."""

    def __init__(self) -> None:
        self.items = self.chars = 0

    def spend(self, items: int, chars: int = 0) -> None:
        self.items += items
        self.chars += chars
        if self.items > MAX_PARAM_ITEMS or self.chars > MAX_PARAM_CHARS:
            raise InvalidInput(
                f"The model's parameters are too large to show as JSON (more than {MAX_PARAM_ITEMS} values "
                f"or {MAX_PARAM_CHARS} characters); download the model instead."
            )

    def value(self, value: Any, depth: int) -> Any:
        if depth > MAX_PARAM_DEPTH:
            raise InvalidInput(
                f"The model's parameters nest deeper than {MAX_PARAM_DEPTH} levels (or refer to themselves); "
                "download the model instead."
            )
        self.spend(1)
        if isinstance(value, dict):
            return {self.key(key): self.value(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item, depth + 1) for item in value]
        if inspect.isclass(value):
            return value.__name__
        if isinstance(value, set | frozenset):
            # In a set's order, which changes with the process's string hashing: sorted, the
            # same model shows the same JSON on every worker.
            return sorted((self.value(item, depth + 1) for item in value), key=repr)
        size = getattr(value, "size", None)
        if isinstance(size, int) and callable(getattr(value, "tolist", None)):
            self.spend(size)  # a numpy array: counted before it is expanded
            return self.value(value.tolist(), depth + 1)
        plain = jsonable(value)
        if isinstance(plain, str):
            self.spend(0, len(plain))
        return plain

    def key(self, key: Any) -> str:
        text = json_key(key)
        self.spend(0, len(text))
        return text


def model_params(model: Any) -> dict[str, Any]:
    """The model's river parameters (``_get_params``) as JSON, nested estimators as
    ``[ClassName, {params}]``; a pipeline's top-level keys are its step names. ``{}`` for
    an object that is not a river estimator.

    Raises :class:`InvalidInput` when the model's code fails (``_get_params`` of an uploaded
    model may raise anything) or its parameters exceed :data:`MAX_PARAM_ITEMS`,
    :data:`MAX_PARAM_CHARS` or :data:`MAX_PARAM_DEPTH`.
    """
    try:
        get_params = getattr(model, "_get_params", None)
        if not callable(get_params):
            return {}
        params = _Walk().value(get_params(), 0)
    except INTERPRETER_EXITS:
        raise
    except RiverMLError:
        raise
    except BaseException as error:  # noqa: BLE001 - model code may raise anything, a Rust panic too
        raise InvalidInput(f"The model's parameters cannot be read: {type(error).__name__}: {error}") from None
    return params if isinstance(params, dict) else {}

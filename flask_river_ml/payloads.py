"""Bounds on what a request may carry, whoever sends it (a JSON body or an in-process call).

JSON as Python parses it accepts ``NaN`` and ``Infinity`` and nests as deep as the parser's
recursion goes; a model fed a NaN may stay broken for good (its metrics at ``nan``), and a
value nested hundreds deep overflows the stack of whatever walks it next (the record's
pickler). Both are refused here, with a message that says what to send instead, and so are
integers too large for a float (a model's arithmetic overflows on them half-way through a
learn).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from .errors import InvalidInput

#: How deep a payload may nest objects and arrays (a flat ``features`` object is depth 2).
MAX_DEPTH = 16
#: How long a prediction's identifier may be.
MAX_IDENTIFIER = 256


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # A literal too large for a float (1e999) reads as infinity.
        raise ValueError(f"the number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; send null or a finite number")


def parse_json(data: bytes) -> Any:
    """The JSON value in ``data``; :class:`InvalidInput` when it is malformed, holds a
    non-finite number or nests deeper than :data:`MAX_DEPTH`."""
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidInput(f"The request body nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"The request body is not valid JSON: {error}.") from None
    check_values(value, "The request body")
    return value


def check_values(value: Any, what: str) -> None:
    """Raise :class:`InvalidInput` when ``value`` holds a non-finite float or nests dicts,
    lists or tuples deeper than :data:`MAX_DEPTH`: what an in-process call is held to, as a
    JSON body is by :func:`parse_json`. Iterative, so a deep value cannot overflow the stack."""
    # Every learn and predict checks its features: a flat dictionary of numbers and strings
    # is scanned in one pass; anything else takes the walk below.
    if _flat_and_finite(value.values() if type(value) is dict else (value,)):
        return
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{what} holds {item!r}; send finite numbers (leave a missing value out).")
            continue
        if isinstance(item, int) and abs(item) > sys.float_info.max:
            # A model turns it into a float, which overflows half-way through its learn.
            raise InvalidInput(f"{what} holds an integer too large for a float; send numbers within 1.8e308.")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels; send flatter values.")
        pending.extend((child, depth + 1) for child in children)


def check_features(features: Any, max_features: int) -> dict:
    """``features`` if they are a dictionary of at most ``max_features`` values that
    :func:`check_values` accepts; :class:`InvalidInput` saying what is wrong otherwise."""
    if not isinstance(features, dict):
        raise InvalidInput(f"features must be a dictionary of feature names to values, not {features!r}.")
    if len(features) > max_features:
        # A model's cost per sample may grow with the square of its features (a covariance,
        # BayesianLinearRegression's) or faster (polynomial features): bounded per request.
        raise InvalidInput(
            f"features holds {len(features)} features, more than {max_features} (RIVER_ML_MAX_FEATURES)."
        )
    check_values(features, "features")
    return features


def check_identifier(identifier: Any) -> str:
    """A prediction's identifier as the string it is kept under; :class:`InvalidInput` when it
    is neither a string of 1 to :data:`MAX_IDENTIFIER` characters nor an integer."""
    # Clients that number their samples send integers; they address the same record as strings.
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        identifier = str(identifier)
    if not isinstance(identifier, str) or not 0 < len(identifier) <= MAX_IDENTIFIER:
        raise InvalidInput(f"identifier must be a string of 1 to {MAX_IDENTIFIER} characters, not {identifier!r}.")
    return identifier


_FLOAT_MAX = sys.float_info.max


def _flat_and_finite(items: Any) -> bool:
    """Whether ``items`` are all finite floats, floats' worth of integers, strings, booleans
    or None: True says the value is fine, False only that it needs the full walk."""
    for item in items:
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return False
        elif kind is int:
            if not -_FLOAT_MAX <= item <= _FLOAT_MAX:
                return False
        elif kind is not str and kind is not bool and item is not None:
            return False
    return True

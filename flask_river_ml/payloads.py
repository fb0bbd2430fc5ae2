"""Bounds on what a request may carry, whoever sends it (a JSON body or an in-process call).

JSON as Python parses it accepts ``NaN`` and ``Infinity`` and nests as deep as the parser's
recursion goes; a model fed a NaN may stay broken for good (its metrics at ``nan``), and a
value nested hundreds deep overflows the stack of whatever walks it next (the record's
pickler). Both are refused here, with a message that says what to send instead, and so are
integers too large for a float (a model's arithmetic overflows on them half-way through a
learn).

A body is parsed by orjson, several times faster than the standard library's parser, which
calls back into Python for every number. Where the two could differ, the body is parsed
again by the standard library, whose reading (and whose refusal, with its message) is the
answer: so a body reads the same whichever parser read it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import orjson

from .errors import InvalidInput

#: How deep a payload may nest objects and arrays (a flat ``features`` object is depth 2).
MAX_DEPTH = 16
#: How long a prediction's identifier may be.
MAX_IDENTIFIER = 256
#: orjson reads an integer beyond 64 bits as the nearest float; the standard parser reads it
#: exactly. A float this large may have been one: its body is read again.
_INTEGER_RANGE = 2.0**63


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
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Malformed, or what only the standard parser reads (a byte order mark, UTF-16, a
        # lone surrogate, a very deep nesting): it says which.
        return _parse_exactly(data)
    return value if _read_alike(value) else _parse_exactly(data)


def _parse_exactly(data: bytes) -> Any:
    """``data`` read by the standard library, which parses every number it meets in Python."""
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidInput(f"The request body nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"The request body is not valid JSON: {error}.") from None
    check_values(value, "The request body")
    return value


def _read_alike(value: Any) -> bool:
    """Whether ``value``, as orjson read it, is what the standard parser reads from the same
    body and within the bounds: no container deeper than :data:`MAX_DEPTH` and no float
    that is not finite or that an integer beyond 64 bits may have become. False says only
    that the body must be read again; orjson's integers and strings are exact."""
    if type(value) is float:
        return -_INTEGER_RANGE < value < _INTEGER_RANGE
    if type(value) is not dict and type(value) is not list:
        return True
    pending = [(value, 1)]
    while pending:
        container, depth = pending.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is float:
                # A NaN fails both comparisons.
                if not -_INTEGER_RANGE < item < _INTEGER_RANGE:
                    return False
            elif kind is dict or kind is list:
                if depth >= MAX_DEPTH:
                    return False
                pending.append((item, depth + 1))
    return True


class Parsed(list[Any]):
    """Values of a JSON body that :func:`parse_json` read, as a list (a batch's samples or
    their features): every one passes :func:`check_values` already, since the body did, and
    its bound on nesting, counted from the body, is the stricter. Those who check values one
    by one (a batch's samples) skip the values of a list of this type."""


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


def check_features(features: Any, max_features: int, parsed: bool = False) -> dict:
    """``features`` if they are a dictionary of at most ``max_features`` values that
    :func:`check_values` accepts; :class:`InvalidInput` saying what is wrong otherwise.
    ``parsed``: they come from a body :func:`parse_json` read, whose values it checked."""
    if not isinstance(features, dict):
        raise InvalidInput(f"features must be a dictionary of feature names to values, not {features!r}.")
    if len(features) > max_features:
        # A model's cost per sample may grow with the square of its features (a covariance,
        # BayesianLinearRegression's) or faster (polynomial features): bounded per request.
        raise InvalidInput(
            f"features holds {len(features)} features, more than {max_features} (RIVER_ML_MAX_FEATURES)."
        )
    if not parsed:
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


def new_identifier() -> str:
    """A random UUID, version 4, written as ``str(uuid.uuid4())`` writes one: every predict
    makes one, and this takes half the time of building a UUID object."""
    return _uuid4_text(os.urandom(16).hex())


def new_identifiers(count: int) -> list[str]:
    """``count`` identifiers as :func:`new_identifier` makes them, from one read of the
    system's random source rather than one each."""
    digits = os.urandom(16 * count).hex()
    return [_uuid4_text(digits[start : start + 32]) for start in range(0, 32 * count, 32)]


#: The hexadecimal digit that holds the RFC 4122 variant (its two high bits 10) for each
#: random digit in its place: what ``uuid.UUID(version=4)`` makes of it.
_VARIANT = {digit: f"{int(digit, 16) & 0x3 | 0x8:x}" for digit in "0123456789abcdef"}


def _uuid4_text(digits: str) -> str:
    """The version 4 UUID made of 32 random hexadecimal ``digits``: the thirteenth is the
    version, 4, and the seventeenth carries the variant."""
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:32]}"

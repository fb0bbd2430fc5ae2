"""How the unpickler names what it refuses, without running any of the upload's code."""

from __future__ import annotations

import types
from typing import Any

from .. import bounds
from ..errors import UnsafePickle


def describe(value: Any) -> str:
    """``value`` for a message, without running any of its code: the repr of an upload's object
    is its class's code (river's runs attribute lookups that may fail or never end)."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, types.FunctionType | types.BuiltinFunctionType):
        return f"the function {getattr(value, '__qualname__', '?')}"
    if type(value) in (type(None), bool, int, float, str, bytes):
        text = repr(value)
        return text if len(text) <= 200 else text[:200] + "..."
    if type(value) in (tuple, list) and len(value) <= 8:
        return "(" + ", ".join(describe(item) for item in value) + ")"
    return f"a {type(value).__qualname__}"


def refuse(what: str) -> UnsafePickle:
    return UnsafePickle(f"The upload {what}, which is not allowed; nothing of it was run.")


def out_of_bounds(error: bounds.OutOfBounds) -> UnsafePickle:
    return UnsafePickle(
        f"The upload's model asks for more than the server allows: {str(error).rstrip('.')}. Nothing of it was run."
    )

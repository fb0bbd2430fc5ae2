"""The walk of a loaded model: how deep it nests, how far it expands through shared
references, and whether each estimator's parameters obey the bounds of a model built from JSON."""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import types
from collections.abc import Iterator
from typing import Any

from .. import bounds
from .refusals import out_of_bounds, refuse

#: How deep an uploaded model may nest: the server pickles it again (its snapshots), and
#: pickling recurses once or twice a level, within Python's limit of 1000 frames.
_MAX_DEPTH = 400
_LEAVES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, str, bytes, bytearray)


def _parts(value: Any) -> Iterator[Any] | None:
    """What ``value`` holds, read without running any of its code; None for a leaf."""
    import numpy

    if isinstance(value, _LEAVES):
        return None
    if isinstance(value, dict):
        return itertools.chain.from_iterable(dict.items(value))
    if isinstance(value, list | tuple | set | frozenset | collections.deque):
        return iter(value)
    if isinstance(value, numpy.ndarray):
        return iter(value.flat) if value.dtype.hasobject else None
    if isinstance(value, functools.partial):
        return iter((value.func, *value.args, *value.keywords.values()))
    parts: list[Any] = []
    try:
        parts.extend(object.__getattribute__(value, "__dict__").values())
    except (AttributeError, TypeError):
        pass
    for cls in type(value).__mro__:
        for name in vars(cls).get("__slots__", ()):
            slot = vars(cls).get(name)
            if isinstance(slot, types.MemberDescriptorType):
                with contextlib.suppress(AttributeError):
                    parts.append(slot.__get__(value))
    return iter(parts) if parts else None


def check_shape(root: Any, max_leaves: int) -> None:
    """Refuse a model nested deeper than _MAX_DEPTH, or one that expands to more than
    ``max_leaves`` values when its shared references are followed (what its JSON and deep
    copies walk): a few hundred bytes of memo references double at each level.

    The same walk checks the bounds of every estimator (``bounds.check_loaded``), with the
    sizes of the ensembles above it multiplied in, as a description's are.

    One iterative depth-first walk; each object's expanded size is computed once."""
    sizes: dict[int, int] = {}
    path: set[int] = {id(root)}
    parts = _parts(root)
    if parts is None:
        return
    frames: list[list[Any]] = [[root, parts, 1, _check_bounds(root, (1, 1))]]
    while frames:
        frame = frames[-1]
        part = next(frame[1], _END)
        if part is _END:
            frames.pop()
            path.discard(id(frame[0]))
            sizes[id(frame[0])] = frame[2]
            if frames:
                frames[-1][2] += frame[2]
                if frames[-1][2] > max_leaves:
                    raise refuse(f"expands to more than {max_leaves} values through shared references")
            continue
        known = sizes.get(id(part))
        if known is not None or id(part) in path:
            frame[2] += known or 1
        else:
            inner = _parts(part)
            if inner is None:
                frame[2] += 1
            elif len(frames) >= _MAX_DEPTH:
                raise refuse(f"nests objects more than {_MAX_DEPTH} levels deep")
            else:
                path.add(id(part))
                frames.append([part, inner, 1, _check_bounds(part, frame[3])])
        if frame[2] > max_leaves:
            raise refuse(f"expands to more than {max_leaves} values through shared references")


_END = object()


def _check_bounds(value: Any, sizes: bounds.Sizes) -> bounds.Sizes:
    try:
        return bounds.check_loaded(value, sizes)
    except bounds.OutOfBounds as error:
        raise out_of_bounds(error) from None

"""A constructor's parameters from JSON: their names against its signature, scalars within the
bounds, and the type each parameter's annotation (or default) asks for, a JSON list becoming
the tuple or set it names."""

from __future__ import annotations

import inspect
import math
from functools import cache
from typing import Any

from ..bounds import OutOfBounds, check_integer
from ..errors import InvalidSpec
from .classes import river_classes


def is_function(value: Any) -> bool:
    # GET shows a function-valued parameter (a distance, a tokenizer) as its repr, which
    # cannot be built: such a parameter keeps its default.
    return isinstance(value, str) and value.startswith(("<function ", "<built-in function "))


def json_scalar(value: Any, where: str, name: str, default: Any) -> Any:
    """A JSON scalar; an integer over ``bounds.MAX_INTEGER`` only as the parameter's default or
    a seed (a size of that order would be allocated, or looped over, by the model)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        try:
            check_integer(value, name, default, where)
        except OutOfBounds as error:
            raise InvalidSpec(str(error)) from None
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise InvalidSpec(f"{where}: {value!r} is not a JSON value (null, true/false, a finite number, a string).")


#: What a built-in name of an annotation accepts, and the container a JSON list becomes for it.
_BUILTIN_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),),
    "list": (list,), "dict": (dict,), "tuple": (tuple,), "set": (set,), "frozenset": (frozenset,),
}  # fmt: skip
_CONTAINERS: dict[str, type] = {"tuple": tuple, "set": set, "frozenset": frozenset}


def _members(annotation: Any) -> list[str]:
    """The base names of an annotation's union members: ``optim.base.Scheduler | float`` ->
    ``["Scheduler", "float"]``; ``[]`` when there is none."""
    if annotation is inspect.Parameter.empty:
        return []
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    members, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            members.append(current)
            current = ""
        else:
            current += char
    members.append(current)
    return [member.strip().split("[", 1)[0].rsplit(".", 1)[-1] for member in members]


def _accepts(member: str, value: Any) -> bool | None:
    """Whether an annotation member accepts ``value``; None when this module cannot tell."""
    if member in _BUILTIN_TYPES:
        if isinstance(value, bool) and member != "bool":
            return False
        return isinstance(value, _BUILTIN_TYPES[member])
    if member not in _base_names():
        return None  # a type alias (FeatureName, Callable): anything JSON gives may do
    return any(k.__name__ == member for k in type(value).__mro__)


@cache
def _base_names() -> frozenset[str]:
    return frozenset(k.__name__ for cls in river_classes().by_path.values() for k in cls.__mro__[:-1])


def typed(value: Any, signature: inspect.Signature, name: str, where: str) -> Any:
    """``value`` if the parameter's annotation (or, without one, its default) accepts it; a
    JSON list becomes the tuple or set the annotation asks for. Refuses a wrong type."""
    parameter = signature.parameters.get(name)
    if parameter is None:
        return value
    members = _members(parameter.annotation)
    if not members:
        default = parameter.default
        if isinstance(default, bool):
            members = ["bool"]
        elif isinstance(default, int | float | str | tuple | set | frozenset | list | dict):
            members = [type(default).__name__]
        else:
            return value
    if isinstance(value, list) and not any(_accepts(m, value) for m in members):
        container = next((_CONTAINERS[m] for m in members if m in _CONTAINERS), None)
        if container is not None:
            try:
                value = container(value)
            except TypeError:
                raise InvalidSpec(f"{where}: the items of {value!r} must be hashable.") from None
    verdicts = [_accepts(member, value) for member in members]
    if any(verdict is None or verdict for verdict in verdicts):
        return value
    expected = " | ".join(members)
    shown = (
        repr(value) if isinstance(value, bool | int | float | str | list | dict | tuple | set) else type(value).__name__
    )
    raise InvalidSpec(f"{where}: {shown} is not a valid value; this parameter takes {expected}.")


def parameter_default(signature: inspect.Signature, name: str) -> Any:
    parameter = signature.parameters.get(name)
    return None if parameter is None else parameter.default


def constructor_signature(cls: type, label: str) -> inspect.Signature:
    try:
        return inspect.signature(cls)
    except (TypeError, ValueError):
        raise InvalidSpec(f"{label}: this class has no constructor signature to build it from.") from None


def check_names(cls: type, signature: inspect.Signature, params: dict, args: list, label: str) -> None:
    kinds = {p.kind for p in signature.parameters.values()}
    named = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        unknown = sorted(set(params) - set(named))
        if unknown:
            raise InvalidSpec(f"{label}: unknown parameter(s) {unknown}; {cls.__name__} takes {named}.")
    if args and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise InvalidSpec(f'{label}: {cls.__name__} takes no positional "args"; give its parameters by name.')


def parameter_hint(signature: inspect.Signature, name: str) -> str:
    parameter = signature.parameters.get(name)
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return ""
    return str(parameter.annotation)

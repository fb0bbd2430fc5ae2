"""One build: a description's classes resolved, its parameters checked and converted, and each
constructor called, nested descriptions first, all within the budgets they share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..bounds import OutOfBounds, Sizes, check_parameters
from ..errors import INTERPRETER_EXITS, InvalidSpec, RiverMLError
from .classes import Names
from .parameters import (
    check_names,
    constructor_signature,
    is_function,
    json_scalar,
    parameter_default,
    parameter_hint,
    typed,
)

_KEYS = {"class", "args", "params"}


class Builder:
    """One build: the allowed modules and the budgets shared by every nested description."""

    def __init__(self, allowed_modules: Iterable[str]) -> None:
        self.names = Names(allowed_modules)

    # --- the description form ----------------------------------------------------------------

    def describe(self, description: dict, where: str, units: Sizes, hint: str = "") -> Any:
        unknown = set(description) - _KEYS
        if unknown or "class" not in description:
            raise InvalidSpec(
                f'{where}: a model description is an object with "class" and optional "args" (a list) '
                f'and "params" (an object); unexpected keys: {sorted(unknown) or "none"}.'
            )
        cls = self.names.resolve(description["class"], where, hint)
        args, params = description.get("args", []), description.get("params", {})
        if not isinstance(args, list):
            raise InvalidSpec(f'{where}: "args" must be a list of positional arguments.')
        if not isinstance(params, dict):
            raise InvalidSpec(f'{where}: "params" must be an object of parameter names and values.')
        return self.call(cls, args, params, where, units)

    def call(self, cls: type, args: list, params: dict, where: str, units: Sizes) -> Any:
        """``cls`` built from ``args`` and ``params``, which may be what GET shows of it: a
        pipeline's or union's steps keyed by step name (river names a step after its class),
        ``*args`` under ``_POSITIONAL_ARGS``, a function-valued parameter as its repr (which
        cannot be built: the parameter keeps its default)."""
        if _is_composite(cls) and params:
            if args:
                raise InvalidSpec(f'{where}: give the steps of {cls.__name__} either as "args" or as "params".')
            steps = []
            for step, value in params.items():
                if not isinstance(value, dict):
                    raise InvalidSpec(f"{where}.{step}: the parameters of a step must be an object.")
                steps.append(
                    self.call(self.names.resolve(step, f"{where}.{step}"), [], value, f"{where}.{step}", units)
                )
            return self.construct(cls, steps, {}, where, units, built=True)
        if "_POSITIONAL_ARGS" in params:
            args, params = params["_POSITIONAL_ARGS"], {k: v for k, v in params.items() if k != "_POSITIONAL_ARGS"}
            if not isinstance(args, list):
                raise InvalidSpec(f"{where}._POSITIONAL_ARGS must be a list.")
        params = {key: value for key, value in params.items() if not is_function(value)}
        return self.construct(cls, args, params, where, units)

    def value(self, value: Any, where: str, name: str, units: Sizes, hint: str = "", default: Any = None) -> Any:
        """The Python value of a parameter: JSON values, nested descriptions, tuples, and the
        ``[ClassName, {params}]`` pairs GET shows nested estimators as."""
        if isinstance(value, list):
            cls = self.pair_class(value, where, hint)
            if cls is not None:
                return self.call(cls, [], value[1], where, units)
            return [self.value(item, f"{where}[{i}]", name, units, hint) for i, item in enumerate(value)]
        if isinstance(value, dict):
            if "class" in value:
                return self.describe(value, where, units, hint)
            if set(value) == {"tuple"} and isinstance(value["tuple"], list):
                items = value["tuple"]
                return tuple(self.value(item, f"{where}[{i}]", name, units, hint) for i, item in enumerate(items))
            return {key: self.value(item, f"{where}.{key}", name, units) for key, item in value.items()}
        return json_scalar(value, where, name, default)

    def pair_class(self, value: list, where: str, hint: str) -> type | None:
        """The class of a ``[ClassName, {params}]`` pair; None for a list that is not one (a
        name that resolves to no class it may build is data, never code)."""
        if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], dict):
            return None
        try:
            return self.names.resolve(value[0], where, hint)
        except InvalidSpec:
            return None

    # --- construction ------------------------------------------------------------------------

    def construct(
        self,
        cls: type,
        args: list,
        params: dict,
        where: str,
        units: Sizes,
        built: bool = False,
    ) -> Any:
        label = f"{where} ({cls.__name__})"
        signature = constructor_signature(cls, label)
        check_names(cls, signature, params, args, label)
        try:
            units = check_parameters(signature, params, label, units)
        except OutOfBounds as error:
            raise InvalidSpec(str(error)) from None
        kwargs = {
            key: typed(
                self.value(
                    value,
                    f"{where}.{key}",
                    key,
                    units,
                    parameter_hint(signature, key),
                    parameter_default(signature, key),
                ),
                signature,
                key,
                f"{where}.{key}",
            )
            for key, value in params.items()
        }
        positional = (
            args if built else [self.value(item, f"{where}.args[{i}]", "", units) for i, item in enumerate(args)]
        )
        try:
            return cls(*positional, **kwargs)
        except INTERPRETER_EXITS:
            raise
        except RiverMLError:
            raise
        except BaseException as error:  # noqa: BLE001 - a constructor may raise anything, a Rust panic too
            raise InvalidSpec(
                f"{label}: the constructor refused its arguments: {type(error).__name__}: {error}"
            ) from None


def _is_composite(cls: type) -> bool:
    from river import compose

    return issubclass(cls, compose.Pipeline | compose.TransformerUnion)

"""Models from JSON descriptions, built with river's own constructors: nothing is unpickled.

A description names a class and the arguments of its constructor::

    {"class": "river.linear_model.LogisticRegression",
     "params": {"optimizer": {"class": "river.optim.SGD", "params": {"lr": 0.1}}}}

``args`` holds positional arguments (a pipeline's steps, a union's transformers, the keys of
``compose.Select``); a JSON list as a pipeline step is a ``TransformerUnion`` of its items, as
in river; ``{"tuple": [...]}`` is a tuple (a named step ``("scale", estimator)``), and a list
becomes the tuple or set a parameter's annotation asks for. What ``GET /api/model/<name>/``
shows of a model is valid ``params`` for its class: ``{"class": "LogisticRegression",
"params": <that JSON>}`` builds an untrained copy.

What resolves: river's public classes (those its packages export, all subclasses of
``river.base.Base``) outside the modules that read files, import or forward attribute access,
and the classes of the modules named in ``RIVER_ML_UNPICKLE_ALLOWED_MODULES`` that the
application has already imported. A path is looked up in the namespace of an imported module,
never through attributes, and nothing the request names is imported.

Construction is bounded before it starts (the size of the description, integers, the sizes
of ensembles and trees) and checked after it (time, and the size of the model's pickle).
"""

from __future__ import annotations

import importlib
import inspect
import io
import math
import pickle
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import dill

from .bounds import OutOfBounds, Sizes, check_integer, check_parameters
from .errors import INTERPRETER_EXITS, InvalidSpec, RiverMLError
from .payloads import check_values

#: river's packages whose public classes may be built; imported once, from this list only.
RIVER_PACKAGES = (
    "active", "anomaly", "bandit", "base", "cluster", "compose", "conf", "covariance", "drift", "dummy",
    "ensemble", "facto", "feature_extraction", "feature_selection", "forest", "imblearn", "linear_model",
    "metrics", "misc", "model_selection", "multiclass", "multioutput", "naive_bayes", "neighbors", "optim",
    "preprocessing", "proba", "reco", "rules", "sketch", "stats", "time_series", "tree",
)  # fmt: skip
#: river modules whose classes read files, iterate data, import or forward attribute access.
RIVER_FORBIDDEN = (
    "river.api", "river.bandit.datasets", "river.bandit.envs", "river.bandit.evaluate", "river.checks",
    "river.compat", "river.datasets", "river.drift.datasets", "river.evaluate", "river.stream", "river.utils",
)  # fmt: skip

#: The most JSON values (objects, arrays, scalars) one description may hold.
MAX_VALUES = 1000
#: The most characters its strings may hold together.
MAX_CHARS = 65_536
#: The most seconds a construction may take; a slower one is refused once it has finished.
MAX_SECONDS = 5.0
#: The largest pickle a built model may have (RIVER_ML_UPLOAD_MAX_BYTES bounds it further).
MAX_MODEL_BYTES = 16 * 2**20

_KEYS = {"class", "args", "params"}


@dataclass(frozen=True)
class _Classes:
    """What class names resolve to: river's public classes by path and by short name."""

    by_path: dict[str, type] = field(default_factory=dict)
    by_name: dict[str, list[type]] = field(default_factory=dict)


def _forbidden(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in RIVER_FORBIDDEN)


def _forwards_attributes(cls: type) -> bool:
    return any("__getattr__" in vars(k) or "__getattribute__" in vars(k) for k in cls.__mro__ if k is not object)


@cache
def _river_classes() -> _Classes:
    """river's public classes, once its packages of :data:`RIVER_PACKAGES` are imported."""
    from river import base

    for package in RIVER_PACKAGES:
        importlib.import_module(f"river.{package}")
    classes = _Classes()
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("river.") or _forbidden(module_name) or "._" in module_name:
            continue
        for name in getattr(module, "__all__", ()):
            value = vars(module).get(name)
            if (
                isinstance(value, type)
                and issubclass(value, base.Base)
                and not _forbidden(value.__module__)
                and not _forwards_attributes(value)
            ):
                classes.by_path[f"{module_name}.{name}"] = value
                if value not in classes.by_name.setdefault(value.__name__, []):
                    classes.by_name[value.__name__].append(value)
    return classes


def _public_path(cls: type) -> str:
    paths = [path for path, value in _river_classes().by_path.items() if value is cls]
    return min(paths, key=len) if paths else f"{cls.__module__}.{cls.__qualname__}"


class _Builder:
    """One build: the allowed modules and the budgets shared by every nested description."""

    def __init__(self, allowed_modules: Iterable[str]) -> None:
        self.allowed = {module.split(".", 1)[0] for module in allowed_modules}
        self.classes = _river_classes()

    # --- resolving names ---------------------------------------------------------------------

    def resolve(self, name: Any, where: str, hint: str = "") -> type:
        """The class ``name`` (a dotted path, or a short name of river's) stands for."""
        if not isinstance(name, str) or not name:
            raise InvalidSpec(f"{where}: 'class' must be a class name such as \"river.linear_model.LinearRegression\".")
        if "." not in name:
            return self._short(name, where, hint)
        found = self.classes.by_path.get(name)
        if found is not None:
            return found
        module_name, _, attribute = name.rpartition(".")
        top = module_name.split(".", 1)[0]
        if top == "river":
            river_cls = vars(sys.modules[module_name]).get(attribute) if module_name in sys.modules else None
            if river_cls is not None and river_cls in self.classes.by_name.get(attribute, ()):
                return river_cls  # a public class named through the module that defines it
            raise InvalidSpec(
                f"{where}: {name!r} is not one of river's estimator or parameter classes that may be built "
                "(a public class of a river package, outside river.datasets, river.stream, river.evaluate, "
                "river.checks, river.compat and river.utils; no functions, methods or attributes)."
            )
        if top not in self.allowed:
            raise InvalidSpec(
                f"{where}: {name!r} is outside river and the modules named in RIVER_ML_UNPICKLE_ALLOWED_MODULES."
            )
        module = sys.modules.get(module_name)
        if module is None:
            raise InvalidSpec(
                f"{where}: the module {module_name!r} is not imported; the application must import the "
                "modules of its custom models (the server never imports what a request names)."
            )
        value = vars(module).get(attribute)
        if not isinstance(value, type) or attribute.startswith("_"):
            raise InvalidSpec(f"{where}: {name!r} is not a class of the module {module_name!r}.")
        if value.__module__.split(".", 1)[0] not in self.allowed or _forwards_attributes(value):
            raise InvalidSpec(f"{where}: {name!r} is not defined in an allowed module, or forwards attribute access.")
        return value

    def _short(self, name: str, where: str, hint: str) -> type:
        candidates = self.classes.by_name.get(name, [])
        if len(candidates) > 1 and hint:
            # The parameter's annotation (optim.base.Scheduler | float) tells river's classes
            # of one name apart (optim.schedulers.Constant, optim.initializers.Constant).
            words = set(re.findall(r"\w+", hint))
            candidates = [c for c in candidates if any(k.__name__ in words for k in c.__mro__[1:-1])] or candidates
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            paths = ", ".join(sorted(_public_path(c) for c in candidates))
            raise InvalidSpec(f"{where}: {name!r} names several river classes; give its full path: {paths}.")
        raise InvalidSpec(
            f"{where}: {name!r} is not one of river's public classes; give its full path, e.g. "
            '"river.linear_model.LinearRegression" (classes of your own modules need the module path).'
        )

    # --- the description form ----------------------------------------------------------------

    def describe(self, description: dict, where: str, units: Sizes, hint: str = "") -> Any:
        unknown = set(description) - _KEYS
        if unknown or "class" not in description:
            raise InvalidSpec(
                f'{where}: a model description is an object with "class" and optional "args" (a list) '
                f'and "params" (an object); unexpected keys: {sorted(unknown) or "none"}.'
            )
        cls = self.resolve(description["class"], where, hint)
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
                steps.append(self.call(self.resolve(step, f"{where}.{step}"), [], value, f"{where}.{step}", units))
            return self.construct(cls, steps, {}, where, units, built=True)
        if "_POSITIONAL_ARGS" in params:
            args, params = params["_POSITIONAL_ARGS"], {k: v for k, v in params.items() if k != "_POSITIONAL_ARGS"}
            if not isinstance(args, list):
                raise InvalidSpec(f"{where}._POSITIONAL_ARGS must be a list.")
        params = {key: value for key, value in params.items() if not _is_function(value)}
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
        return _scalar(value, where, name, default)

    def pair_class(self, value: list, where: str, hint: str) -> type | None:
        """The class of a ``[ClassName, {params}]`` pair; None for a list that is not one (a
        name that resolves to no class it may build is data, never code)."""
        if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], dict):
            return None
        try:
            return self.resolve(value[0], where, hint)
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
        signature = _signature(cls, label)
        _check_names(cls, signature, params, args, label)
        try:
            units = check_parameters(signature, params, label, units)
        except OutOfBounds as error:
            raise InvalidSpec(str(error)) from None
        kwargs = {
            key: _typed(
                self.value(value, f"{where}.{key}", key, units, _hint(signature, key), _default(signature, key)),
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


def _is_function(value: Any) -> bool:
    # GET shows a function-valued parameter (a distance, a tokenizer) as its repr, which
    # cannot be built: such a parameter keeps its default.
    return isinstance(value, str) and value.startswith(("<function ", "<built-in function "))


def _scalar(value: Any, where: str, name: str, default: Any) -> Any:
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
    return frozenset(k.__name__ for cls in _river_classes().by_path.values() for k in cls.__mro__[:-1])


def _typed(value: Any, signature: inspect.Signature, name: str, where: str) -> Any:
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


def _default(signature: inspect.Signature, name: str) -> Any:
    parameter = signature.parameters.get(name)
    return None if parameter is None else parameter.default


def _signature(cls: type, label: str) -> inspect.Signature:
    try:
        return inspect.signature(cls)
    except (TypeError, ValueError):
        raise InvalidSpec(f"{label}: this class has no constructor signature to build it from.") from None


def _check_names(cls: type, signature: inspect.Signature, params: dict, args: list, label: str) -> None:
    kinds = {p.kind for p in signature.parameters.values()}
    named = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        unknown = sorted(set(params) - set(named))
        if unknown:
            raise InvalidSpec(f"{label}: unknown parameter(s) {unknown}; {cls.__name__} takes {named}.")
    if args and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise InvalidSpec(f'{label}: {cls.__name__} takes no positional "args"; give its parameters by name.')


def _hint(signature: inspect.Signature, name: str) -> str:
    parameter = signature.parameters.get(name)
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return ""
    return str(parameter.annotation)


def _check_size(description: Any) -> None:
    check_values(description, "The model description")
    values = chars = 0
    pending = [description]
    while pending:
        item = pending.pop()
        values += 1
        if isinstance(item, dict):
            chars += sum(len(key) if isinstance(key, str) else MAX_CHARS for key in item)
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, str):
            chars += len(item)
        if values > MAX_VALUES or chars > MAX_CHARS:
            raise InvalidSpec(
                f"The model description is too large: at most {MAX_VALUES} values and {MAX_CHARS} characters."
            )


class _Budget(io.RawIOBase):
    """A sink that counts what is pickled into it and stops the pickler past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.count(memoryview(data).nbytes)

    def count(self, size: int) -> int:
        self.size += size
        if self.size > self.limit:
            raise InvalidSpec(
                f"The model built from the description would take more than {self.limit} bytes; ask for a smaller one."
            )
        return size

    def buffer(self, buffer: pickle.PickleBuffer) -> bool:
        # numpy hands its arrays out of band: counted by size, never copied or even touched.
        self.count(buffer.raw().nbytes)
        return False


def _check_built(model: Any, seconds: float, max_bytes: int) -> None:
    name = type(model).__name__
    if seconds > MAX_SECONDS:
        raise InvalidSpec(f"Building {name} took {seconds:.1f} s, more than {MAX_SECONDS} s; ask for a smaller model.")
    sink = _Budget(max_bytes)
    try:
        try:
            pickle.Pickler(sink, protocol=5, buffer_callback=sink.buffer).dump(model)
        except (pickle.PicklingError, TypeError, AttributeError):
            sink.size = 0
            dill.Pickler(sink, protocol=5, buffer_callback=sink.buffer).dump(model)
    except InvalidSpec:
        raise
    except INTERPRETER_EXITS:
        raise
    except BaseException as error:  # noqa: BLE001 - a model's pickling hooks may raise anything
        raise InvalidSpec(f"The {name} built from the description cannot be pickled: {error}") from None


def build(description: Any, allowed_modules: Iterable[str] = (), max_bytes: int = MAX_MODEL_BYTES) -> Any:
    """The estimator that ``description`` describes, built with river's constructors.

    ``description`` is an object with ``class`` and optional ``args`` and ``params``; its
    ``params`` may be what ``GET /api/model/<name>/`` shows of a model of that class, which
    builds an untrained copy. Raises :class:`InvalidSpec` naming the path in the description
    and what to change for anything that cannot or may not be built; the built model's pickle
    is bounded by ``max_bytes`` (and :data:`MAX_MODEL_BYTES`).
    """
    if not isinstance(description, dict):
        raise InvalidSpec(
            'A model description is an object such as {"class": "river.linear_model.LinearRegression", '
            '"params": {"l2": 0.01}}.'
        )
    _check_size(description)
    started = time.monotonic()
    model = _Builder(allowed_modules).describe(description, "model", (1, 1))
    _check_built(model, time.monotonic() - started, min(max_bytes, MAX_MODEL_BYTES))
    return model

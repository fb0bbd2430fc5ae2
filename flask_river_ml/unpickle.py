"""The restricted unpickler for uploaded models.

An uploaded model is a ``dill`` pickle from a client: unpickling it with ``pickle.loads`` would
run whatever its ``__reduce__`` asks for. This unpickler resolves only the globals a river model
needs, and refuses anything else before it is called:

- classes and functions that river itself defines, and those of the modules named in
  ``RIVER_ML_UNPICKLE_ALLOWED_MODULES`` (where custom models live): river keeps tokenizers and
  distance functions as parameters. What a module merely imports (``io.open``,
  ``pickle.loads``) is not offered, nor are modules ending in ``__main__``;
- from river, nothing of ``river.datasets``, ``river.stream``, ``river.evaluate``,
  ``river.checks`` or ``river.bandit.datasets``, whose callables read files, iterate data or
  unpickle;
- from numpy, arrays, dtypes, scalar types, random generators and the functions that rebuild
  them (not ``memmap``, which writes files); from scipy, the sparse matrix classes;
- from the standard library, the containers and value types models hold (``collections``,
  ``random.Random``, ``datetime``, ``decimal``, ``fractions``, ``statistics.NormalDist``, ...)
  and a few harmless built-ins;
- from dill, the helpers its pickles of importable objects use, limited to harmless arguments.

Functions serialized by value (lambdas, classes defined in ``__main__``) need dill to build code
objects, which is exactly what is refused: define such models in an importable module and
name it in ``RIVER_ML_UNPICKLE_ALLOWED_MODULES``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import random
import types
from collections.abc import Iterable
from typing import Any

from .errors import UnsafePickle

_BUILTINS = {
    "bool", "complex", "dict", "float", "frozenset", "int", "list", "object", "set", "slice", "str", "tuple",
}  # fmt: skip
#: The most elements a constructor called by an upload may allocate: a few bytes of pickle
#: must not ask for gigabytes.
_MAX_ELEMENTS = 10_000_000
#: Standard-library globals that models hold: module -> names.
_STANDARD = {
    "collections": {"Counter", "OrderedDict", "defaultdict", "deque"},
    "copy": {"copy", "deepcopy"},
    "copyreg": {"_reconstructor", "__newobj__", "__newobj_ex__"},
    "datetime": {"date", "datetime", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "functools": {"partial"},
    # BagOfWords(on=...) and TFIDF(on=...) keep an itemgetter (never attrgetter or
    # methodcaller: chained, those reach any function's globals).
    "operator": {"itemgetter"},
    "random": {"Random", "Random.gauss", "Random.random", "Random.uniform", "Random.randint"},
    "re": {"_compile"},
    "statistics": {"NormalDist"},
    "_codecs": {"encode"},
}
#: numpy functions that rebuild arrays, scalars and random generators.
_NUMPY_FUNCTIONS = {
    "_reconstruct", "scalar", "_frombuffer", "__randomstate_ctor", "__generator_ctor",
    "__bit_generator_ctor", "__pyx_unpickle_SeedSequence", "array",
}  # fmt: skip
#: numpy constructors called with a shape: bounded by _MAX_ELEMENTS.
_NUMPY_SHAPED = {"empty", "full", "ones", "zeros"}
_RIVER_FORBIDDEN = ("river.datasets", "river.stream", "river.evaluate", "river.checks", "river.bandit.datasets")
#: Types dill refers to by name: only inert ones may be loaded.
_DILL_TYPES = _BUILTINS | {
    "NoneType", "EllipsisType", "NotImplementedType", "MethodDescriptorType", "WrapperDescriptorType",
    "PartialType", "MethodType", "ItemGetterType",
}  # fmt: skip


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _load_type(name: str) -> type:
    if name not in _DILL_TYPES:
        raise UnsafePickle(f"The upload asks dill for the type {name!r}, which is not allowed.")
    from dill._dill import _load_type as load

    return load(name)  # type: ignore[no-any-return]


#: Methods of a random generator a model may hold bound (river's KMeans keeps ``rng.gauss``).
_RANDOM_METHODS = {"gauss", "random", "uniform", "randint", "normalvariate", "choice", "shuffle"}


def _getattr(obj: Any, name: str, *default: Any) -> Any:
    # Pickles name a bound method as getattr(owner, name): str.lower (dill), rng.gauss
    # (pickle). Only those two kinds: a bound method of any object could write files
    # (ndarray.tofile).
    builtin_method = isinstance(obj, type) and obj.__module__ == "builtins" and not name.startswith("_")
    random_method = isinstance(obj, random.Random) and name in _RANDOM_METHODS
    if not (builtin_method or random_method):
        raise UnsafePickle(f"The upload asks for the attribute {name!r} of {obj!r}, which is not allowed.")
    return getattr(obj, name, *default)


def _size(shape: Any) -> int:
    dimensions = shape if isinstance(shape, tuple | list) else (shape,)
    size = 1
    for dimension in dimensions:
        size *= int(dimension)
    return size


def _bounded(constructor: Any) -> Any:
    """``constructor`` refusing sizes over _MAX_ELEMENTS (an int first argument is a size)."""

    def build(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], int | tuple | list) and not isinstance(args[0], bool):
            if _size(args[0]) > _MAX_ELEMENTS:
                raise UnsafePickle(f"The upload asks for {args[0]!r} elements, more than {_MAX_ELEMENTS}.")
        return constructor(*args, **kwargs)

    return build


def _iter(iterable: Any) -> Any:
    # The one-argument form only: iter(callable, sentinel) would call a callable until it stops.
    return iter(iterable)


def _create_array(factory: Any, args: tuple, state: Any, npdict: dict | None = None) -> Any:
    # dill's numpy array helper; ``factory`` went through find_class like every other global.
    from dill._dill import _create_array as create

    return create(factory, args, state, npdict)


_DILL_HELPERS = {"_load_type": _load_type, "_getattr": _getattr, "_create_array": _create_array}


def _is_dunder(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("__") and key.endswith("__")


class SafeUnpickler(pickle._Unpickler):
    """A pickle unpickler whose ``find_class`` allows only the safe list and whose BUILD step
    only fills the attributes of instances.

    It is the pure-Python unpickler (an upload is loaded once): its BUILD can be checked.
    Setting state on a class, module or function would change it for the whole process, and a
    dunder attribute on an instance (``__reduce_ex__``, ``__class__``) would change how the
    server pickles it later; both are refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, allowed_modules: Iterable[str] = ()) -> None:
        super().__init__(file)
        self.allowed_modules = frozenset(allowed_modules)

    def load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]  # type: ignore[attr-defined]
        if isinstance(target, type | types.ModuleType | types.FunctionType | types.BuiltinFunctionType):
            raise UnsafePickle(f"The upload sets attributes of {target!r}, which is not allowed.")
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, dict) and any(_is_dunder(key) for key in part):
                raise UnsafePickle("The upload sets special (dunder) attributes of an object, which is not allowed.")
        super().load_build()  # type: ignore[misc]

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]

    def find_class(self, module: str, name: str) -> Any:
        if module == "dill._dill" and name in _DILL_HELPERS:
            return _DILL_HELPERS[name]
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if module == "builtins" and name == "iter":
            return _iter
        if module == "builtins" and name == "getattr":
            return _getattr
        if module == "builtins" and name in ("bytes", "bytearray"):
            return _bounded(super().find_class(module, name))
        if name in _STANDARD.get(module, ()):
            return super().find_class(module, name)
        top = _top(module)
        if "__main__" in module.split(".") or module.startswith(_RIVER_FORBIDDEN):
            raise self._refuse(module, name)
        if top == "river" or top in self.allowed_modules:
            obj = self._resolve(module, name)
            # Only what the package itself defines: a module's imports (io.open, pickle.loads)
            # are not the package's to offer. River's compiled helpers are built-in routines.
            if _top(getattr(obj, "__module__", None) or "") == top and (
                isinstance(obj, type) or inspect.isroutine(obj)
            ):
                return obj
        elif top == "numpy":
            obj = self._resolve(module, name)
            if name in _NUMPY_SHAPED:
                return _bounded(obj)
            if name in _NUMPY_FUNCTIONS or _numpy_value_type(obj):
                return obj
        elif top == "scipy" and module.startswith("scipy.sparse"):
            obj = self._resolve(module, name)
            if isinstance(obj, type) and _top(obj.__module__) == "scipy":
                return obj
        raise self._refuse(module, name)

    def _resolve(self, module: str, name: str) -> Any:
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
                # A dotted name must stay inside the module: no walking into its imports.
                if isinstance(obj, types.ModuleType):
                    raise self._refuse(module, name)
        except (ImportError, AttributeError):
            raise UnsafePickle(f"The upload refers to {module}.{name}, which cannot be found on the server.") from None
        return obj

    def _refuse(self, module: str, name: str) -> UnsafePickle:
        return UnsafePickle(
            f"The upload refers to {module}.{name}, which is outside the safe list; nothing of it was run. "
            "Models defined in your own module load when the module is importable on the server and "
            "named in RIVER_ML_UNPICKLE_ALLOWED_MODULES."
        )


def _numpy_value_type(obj: Any) -> bool:
    """Arrays, dtypes, scalar types and random generators; not memmap or file-backed classes."""
    import numpy

    if not isinstance(obj, type):
        return False
    if obj in (numpy.ndarray, numpy.dtype) or issubclass(obj, numpy.generic | numpy.dtype):
        return True
    return issubclass(obj, numpy.random.RandomState | numpy.random.Generator | numpy.random.BitGenerator) or (
        obj is numpy.random.SeedSequence
    )


def safe_loads(data: bytes, allowed_modules: Iterable[str] = (), max_bytes: int | None = None) -> Any:
    """Unpickle an uploaded model, resolving only the safe list (see the module docstring)."""
    try:
        return SafeUnpickler(io.BytesIO(data), allowed_modules).load()
    except UnsafePickle:
        raise
    # SystemExit too: a module imported while resolving a class must not stop the server.
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any malformed pickle is the client's error
        raise UnsafePickle(f"The upload is not a loadable pickle of a model: {error!r}") from None

"""The restricted unpickler for uploaded models: it allows classes, not code.

A pickle is a small program for a stack machine whose instructions name globals and call them.
This unpickler runs that program with four rules, checked before anything is called:

- **Names resolve to classes on an allow-list** (``_AllowList``): river's estimators, metrics,
  stats and the data structures their state holds; numpy and scipy value types; the standard
  containers and value types; and the classes defined in the modules named in
  ``RIVER_ML_UNPICKLE_ALLOWED_MODULES``. No function, method or attribute path resolves,
  except a short list of named functions that river models keep as parameters (tokenizers,
  distance functions, static methods used as factories).
  A name resolves only in a module the server has imported already: the unpickler never
  imports (importing a module runs it), so a custom model's module must be imported by the app.
- **Only listed callables are called.** REDUCE, NEWOBJ, NEWOBJ_EX, INST and OBJ call a class
  on the list or one of the reconstructors of ``_RECONSTRUCTORS`` (copyreg's, numpy's, dill's
  inert helpers, ``getattr`` limited to what river pickles need), each with its arguments
  checked. A callable produced any other way (an attribute of an object, a bound method) is
  refused. Calling a river estimator class runs its ``__init__``; river's pickles never do, so
  only the few classes whose pickles need it are callable.
- **BUILD sets plain instance state.** No state on classes, modules or functions, no dunder
  attribute, slot state only through ``object.__setattr__``; a class's own ``__setstate__``
  runs only for classes on the list, numpy's after its sizes are checked.
- **Allocations are checked before they happen.** numpy arrays and dtypes (element count with
  sub-array shapes, itemsize, offset and strides inside the buffer, no object arrays over raw
  memory), ``bytes(n)``, container elements: everything is charged to one budget per upload
  (``_budget``), eight times its size plus a fixed margin.
- **What the model will allocate later is bounded too.** Once loaded, every estimator's
  parameters obey the bounds of a model built from JSON (``bounds``: ensemble sizes
  multiplied along nested ensembles, components, tree heights, tokenizer patterns, n-gram
  lengths, stop words), and a text model's
  preprocessing steps take their arguments by keyword, within the same bounds.

Any failure while loading, whatever it raises (a Rust panic included) but the interpreter's
own exits, is an :class:`~flask_river_ml.errors.UnsafePickle` naming the problem.
"""

from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import copy
import datetime
import decimal
import fractions
import functools
import importlib
import inspect
import io
import itertools
import math
import operator
import pickle
import random
import statistics
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from . import bounds
from .errors import INTERPRETER_EXITS, UnsafePickle

#: The river packages whose classes may be unpickled, imported once (a fixed list, never a name
#: read from a pickle) when the allow-list is first built: ``import river`` imports none of them.
_RIVER_PACKAGES = (
    "active", "anomaly", "bandit", "base", "cluster", "compose", "conf", "covariance", "drift", "dummy",
    "ensemble", "facto", "feature_extraction", "feature_selection", "forest", "imblearn", "linear_model",
    "metrics", "misc", "model_selection", "multiclass", "multioutput", "naive_bayes", "neighbors", "optim",
    "preprocessing", "proba", "reco", "rules", "sketch", "stats", "time_series", "tree", "utils",
)  # fmt: skip
#: River modules none of whose classes are allowed: they read files or iterate data (datasets,
#: streams, evaluation, the estimator checks, which also unpickle), wrap other libraries
#: (compat), or forward attribute access to what they wrap (rolling: ``Rolling.__getattr__``
#: hands out any attribute of any object it holds).
_RIVER_FORBIDDEN = (
    "river.datasets", "river.stream", "river.evaluate", "river.checks", "river.bandit.datasets",
    "river.bandit.envs", "river.bandit.evaluate", "river.drift.datasets", "river.compat", "river.api",
    "river.utils.rolling",
)  # fmt: skip
#: Standard-library classes whose instances models hold; each is a plain value or container.
_STANDARD_CLASSES: tuple[type, ...] = (
    bool, bytearray, bytes, complex, dict, float, frozenset, int, list, object, set, slice, str, tuple,
    range, type(None), type(iter([])), collections.Counter, collections.OrderedDict, collections.defaultdict,
    collections.deque, datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone,
    decimal.Decimal, fractions.Fraction, random.Random, statistics.NormalDist, functools.partial,
    # BagOfWords(on=...) and TFIDF(on=...) keep an itemgetter (never attrgetter or methodcaller:
    # chained, those reach any attribute of any object).
    operator.itemgetter,
    # Bound methods are pickled as MethodType(function, instance); _method checks both.
    types.MethodType,
)  # fmt: skip
#: Methods of a random generator that models keep bound (river's KMeans keeps ``rng.gauss``).
_RANDOM_METHODS = frozenset({"gauss", "random", "uniform", "randint", "normalvariate", "choice", "shuffle", "sample"})
#: dill names some types instead of pickling them by reference: the inert ones it may name.
_DILL_TYPES = frozenset({
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "object", "set",
    "slice", "str", "tuple", "NoneType", "MethodType", "PartialType", "ItemGetterType", "MethodDescriptorType",
})  # fmt: skip
#: Opcodes' MARK-free containers and calls each cost at least this much memory.
_OBJECT_COST = 64
#: Each element of a list, tuple, set or dict costs about a pointer (two for a dict item).
_SLOT_COST = 8
#: The budget of one upload: this many times its size, plus _BUDGET_MARGIN.
_BUDGET_FACTOR = 8
_BUDGET_MARGIN = 32 * 1024 * 1024
#: The most dimensions an uploaded array may have (numpy's own limit is 64).
_MAX_DIMENSIONS = 32


def _describe(value: Any) -> str:
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
        return "(" + ", ".join(_describe(item) for item in value) + ")"
    return f"a {type(value).__qualname__}"


def _refuse(what: str) -> UnsafePickle:
    return UnsafePickle(f"The upload {what}, which is not allowed; nothing of it was run.")


class _Budget:
    """The bytes an upload may make the server allocate, charged before each allocation."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, amount: int, what: str) -> None:
        self.used += max(int(amount), 0)
        if self.used > self.limit:
            raise UnsafePickle(
                f"The upload asks for more memory than its size allows ({what}: over {self.limit} bytes in "
                "all); nothing was allocated for it."
            )


def _budget(size: int, max_bytes: int | None) -> _Budget:
    """An upload of ``size`` bytes may decode to _BUDGET_FACTOR times that, plus a margin; with
    ``size`` at most RIVER_ML_UPLOAD_MAX_BYTES, no upload gets more than that factor of the setting."""
    if max_bytes is not None and size > max_bytes:
        raise UnsafePickle(f"The upload is {size} bytes, more than RIVER_ML_UPLOAD_MAX_BYTES ({max_bytes}).")
    return _Budget(_BUDGET_FACTOR * size + _BUDGET_MARGIN)


# --- the allow-list --------------------------------------------------------------------------------


def _forwards_attributes(cls: type) -> bool:
    """Whether instances of ``cls`` compute their attributes in Python (``__getattr__`` or a
    ``__getattribute__`` of its own): such a class can hand out anything it can reach."""
    return any(
        isinstance(vars(klass).get(name), types.FunctionType)
        for klass in cls.__mro__
        for name in ("__getattr__", "__getattribute__")
    )


def _defined_classes(module: types.ModuleType) -> list[type]:
    """The classes ``module`` defines (not those it imports), nested classes included."""
    found, pending = [], [value for value in vars(module).values() if isinstance(value, type)]
    while pending:
        cls = pending.pop()
        if cls.__module__ == module.__name__ and cls not in found:
            found.append(cls)
            pending.extend(value for value in vars(cls).values() if isinstance(value, type))
    return found


def _numpy_classes() -> list[type]:
    import numpy
    import numpy.random

    scalars, pending = [], [numpy.generic]
    while pending:
        cls = pending.pop()
        scalars.append(cls)
        pending.extend(cls.__subclasses__())
    dtypes = [cls for cls in vars(numpy.dtypes).values() if isinstance(cls, type) and issubclass(cls, numpy.dtype)]
    generators = [
        numpy.random.RandomState, numpy.random.Generator, numpy.random.SeedSequence, numpy.random.MT19937,
        numpy.random.PCG64, numpy.random.PCG64DXSM, numpy.random.Philox, numpy.random.SFC64,
    ]  # fmt: skip
    # Not numpy.memmap (a file), nor numpy.matrix and masked arrays (not used by models).
    return [numpy.ndarray, numpy.dtype, *dtypes, *scalars, *generators]


def _scipy_classes() -> list[type]:
    # Only when river (or the app) imported scipy.sparse already: the list never imports it.
    sparse = sys.modules.get("scipy.sparse")
    if sparse is None:
        return []
    names = [
        f"{kind}_{suffix}"
        for kind in ("bsr", "coo", "csc", "csr", "dia", "dok", "lil")
        for suffix in ("matrix", "array")
    ]
    return [getattr(sparse, name) for name in names if isinstance(getattr(sparse, name, None), type)]


def _river_classes() -> list[type]:
    for package in _RIVER_PACKAGES:
        importlib.import_module(f"river.{package}")
    classes: list[type] = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("river.") or name.startswith(_RIVER_FORBIDDEN) or ".test" in name:
            continue
        classes.extend(
            cls
            for cls in _defined_classes(module)
            if not _forwards_attributes(cls) and not issubclass(cls, BaseException)
        )
    return classes


class _AllowList:
    """Every class and named function an upload may refer to, built once."""

    def __init__(self) -> None:
        import numpy
        import river.feature_extraction.vectorize as vectorize
        import river.forest.online_extra_trees as extra_trees
        import river.naive_bayes.gaussian
        import river.time_series.holt_winters as holt_winters
        import river.tree.splitter.ebst_splitter as ebst
        import river.tree.splitter.nominal_splitter_reg as nominal_reg
        import river.utils.math
        import river.utils.vectordict as vectordict

        self.classes: frozenset[type] = frozenset(
            (*_STANDARD_CLASSES, *_numpy_classes(), *_scipy_classes(), *_river_classes())
        )
        #: Functions that river's default models keep as state, each for a reason; they may be
        #: values, never called while loading.
        values: list[Any] = [
            # Distance functions of neighbours, clusterers and chains (dist_func parameters).
            river.utils.math.minkowski_distance, river.utils.math._euclidean_distance,
            river.utils.math._manhattan_distance, vectordict.euclidean_distance_dict,
            vectordict.euclidean_distance_tuple,
            # BagOfWords / TFIDF keep their preprocessing steps as partials of these.
            vectorize.strip_accents_unicode, vectorize.tokenize_using_regex_pattern, vectorize.remove_stop_words,
            vectorize.find_ngrams, vectorize.find_all_ngrams,
            # dill names str.lower (TFIDF/BagOfWords lowercase=True) through its _getattr helper.
            str.lower,
            # Factories of defaultdicts: copies of a prototype (OneVsOne, Grouper, Agg), LDA's arrays.
            copy.deepcopy, numpy.ones, numpy.array,
            # Static methods kept as factories or update rules.
            river.naive_bayes.gaussian.GaussianNB._make_gaussian,
            ebst.EBSTNode._update_estimator_univariate, ebst.EBSTNode._update_estimator_multivariate,
            nominal_reg.NominalSplitterReg._update_estimator_univariate,
            nominal_reg.NominalSplitterReg._update_estimator_multivariate,
            extra_trees.ExtraTrees._detection_mode_all, extra_trees.ExtraTrees._detection_mode_drop,
            extra_trees.ExtraTrees._detection_mode_off,
        ]  # fmt: skip
        self.values = {id(value): value for value in values}
        #: River classes that their pickles call (their __reduce__ returns the class and its
        #: arguments): the other estimators are rebuilt without running __init__.
        self.callable_river: frozenset[type] = frozenset(
            {
                vectordict.VectorDict, holt_winters.AdditiveLevel, holt_winters.MultiplicativeLevel,
                holt_winters.Trend, holt_winters.AdditiveSeason, holt_winters.MultiplicativeSeason,
            }
        )  # fmt: skip
        #: The compiled (Rust) classes, whose __new__ takes numbers and whose state is bytes.
        self.compiled: frozenset[type] = frozenset(
            cls for cls in self.classes if cls.__module__.startswith("river._river_rust")
        )


@functools.cache
def _allow_list() -> _AllowList:
    return _AllowList()


# --- argument checks -------------------------------------------------------------------------------

_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _plain(value: Any) -> bool:
    """Whether calling a built-in constructor on ``value`` runs no code of the upload's objects:
    scalars, time zones (a datetime's), and the built-in containers (their elements are stored,
    never called)."""
    return type(value) in _PLAIN or type(value) in (tuple, list, dict, set, frozenset, datetime.timezone)


def _shape(value: Any) -> tuple[int, ...]:
    shape = value if isinstance(value, tuple | list) else (value,)
    if len(shape) > _MAX_DIMENSIONS or not all(type(size) is int and size >= 0 for size in shape):
        raise _refuse(f"asks for an array of shape {_describe(value)}")
    return tuple(shape)


def _dtype(value: Any) -> Any:
    """A numpy dtype from a dtype, a short type string or a scalar type: numpy.dtype() on any
    other object would read its ``dtype`` attribute."""
    import numpy

    if isinstance(value, numpy.dtype):
        return value
    allowed = isinstance(value, str | bytes) and len(value) <= 64
    allowed = allowed or (isinstance(value, type) and (issubclass(value, numpy.generic) or value in _PLAIN[1:5]))
    if not allowed:
        raise _refuse(f"describes an array type with {_describe(value)}")
    return numpy.dtype(value)


def _array_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    # itemsize covers sub-array dtypes ("(8000,8000)f8" is 512 MB an element); an object
    # element is a pointer.
    return math.prod(shape) * max(dtype.itemsize, 1)


class _Checks:
    """The reconstructors an upload may call, each checking its arguments against one upload's
    budget before it allocates or calls anything."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.budget = loader.budget
        self.allow = loader.allow

    # numpy ------------------------------------------------------------------------------------

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        import numpy
        from numpy._core.multiarray import _reconstruct

        if subtype is not numpy.ndarray:
            raise _refuse(f"rebuilds an array as {_describe(subtype)}")
        checked_shape, checked_dtype = _shape(shape), _dtype(dtype)
        self.budget.charge(_array_bytes(checked_shape, checked_dtype), "an array")
        return _reconstruct(numpy.ndarray, checked_shape, checked_dtype)

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> Any:
        from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]

        checked_shape, checked_dtype = _shape(shape), _dtype(dtype)
        if type(buffer) not in (bytes, bytearray) or checked_dtype.hasobject or order not in ("C", "F"):
            raise _refuse("builds an array from something other than its bytes")
        if len(buffer) != _array_bytes(checked_shape, checked_dtype):
            raise _refuse(f"builds an array of shape {checked_shape} from {len(buffer)} bytes")
        self.budget.charge(len(buffer), "an array")
        return _frombuffer(buffer, checked_dtype, checked_shape, order)

    def ndarray(
        self,
        shape: Any,
        dtype: Any = float,
        buffer: Any = None,
        offset: Any = 0,
        strides: Any = None,
        order: Any = None,
    ) -> Any:
        """numpy.ndarray(...) over a buffer: every element must lie inside it (a negative
        offset or a stride past its end reads or writes the server's memory)."""
        import numpy

        checked_shape, checked_dtype = _shape(shape), _dtype(dtype)
        size = _array_bytes(checked_shape, checked_dtype)
        if order not in (None, "C", "F"):
            raise _refuse(f"asks for an array order {_describe(order)}")
        if buffer is None:
            if offset != 0 or strides is not None:
                raise _refuse("gives an array an offset or strides without a buffer")
            self.budget.charge(size, "an array")
            return numpy.ndarray(checked_shape, checked_dtype, order=order)
        if type(buffer) not in (bytes, bytearray) or checked_dtype.hasobject:
            raise _refuse("builds an array over something other than plain bytes")
        if type(offset) is not int or offset < 0:
            raise _refuse(f"gives an array the offset {_describe(offset)}")
        if strides is None:
            low, high = offset, offset + size
        else:
            steps = _shape_steps(strides, len(checked_shape))
            extents = [(length - 1) * step for length, step in zip(checked_shape, steps, strict=True)]
            low = offset + sum(min(extent, 0) for extent in extents)
            high = offset + sum(max(extent, 0) for extent in extents) + checked_dtype.itemsize
        if math.prod(checked_shape) and (low < 0 or high > len(buffer)):
            raise _refuse(f"reads bytes {low} to {high} of a buffer of {len(buffer)}")
        self.budget.charge(_OBJECT_COST, "an array")
        return numpy.ndarray(checked_shape, checked_dtype, buffer, offset, strides, order)

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        import numpy
        from numpy._core.multiarray import scalar

        if not isinstance(dtype, numpy.dtype):
            raise _refuse(f"builds a numpy scalar of {_describe(dtype)}")
        if not dtype.hasobject and (type(data) is not bytes or len(data) != dtype.itemsize):
            raise _refuse(f"builds a numpy scalar of {dtype} from {type(data).__name__}")
        self.budget.charge(dtype.itemsize, "a numpy scalar")
        return scalar(dtype, data)

    def dtype(self, value: Any, align: Any = False, copy: Any = False) -> Any:
        import numpy

        if type(align) is not bool or type(copy) is not bool:
            raise _refuse("passes a dtype flags that are not booleans")
        made = numpy.dtype(_dtype(value), align, copy)
        if copy:
            # Only a copy may take state (BUILD): numpy's own dtypes are shared by the process.
            self.loader.own_dtypes.add(id(made))
        return made

    def bit_generator(self, kind: Any = "MT19937") -> Any:
        import numpy.random

        kinds = {cls.__name__: cls for cls in _allow_list().classes if _is_bit_generator(cls)}
        chosen = kinds.get(kind) if isinstance(kind, str) else kind if kind in kinds.values() else None
        if chosen is None:
            raise _refuse(f"asks for the random bit generator {_describe(kind)}")
        assert issubclass(chosen, numpy.random.BitGenerator)
        return chosen()

    def random_state(self, bit_generator: Any = "MT19937") -> Any:
        import numpy.random

        # numpy's helper also takes a constructor to call: never passed on.
        return numpy.random.RandomState(self._bit_generator_of(bit_generator))

    def generator(self, bit_generator: Any = "MT19937") -> Any:
        import numpy.random

        return numpy.random.Generator(self._bit_generator_of(bit_generator))

    def _bit_generator_of(self, value: Any) -> Any:
        import numpy.random

        return value if isinstance(value, numpy.random.BitGenerator) else self.bit_generator(value)

    def seed_sequence(self, cls: Any, checksum: Any, state: Any) -> Any:
        import numpy.random

        if cls is not numpy.random.SeedSequence or type(checksum) is not int:
            raise _refuse(f"rebuilds {_describe(cls)} as a seed sequence")
        # Looked up by name: written here, the double underscore would be mangled.
        unpickle = vars(sys.modules["numpy.random.bit_generator"])["__pyx_unpickle_SeedSequence"]
        return unpickle(cls, checksum, state)

    # the standard library and dill -------------------------------------------------------------------

    def reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """copyreg._reconstructor (protocols 0 and 1): ``object.__new__(cls)``, or a built-in
        base's constructor on a plain state."""
        self.loader.check_class(cls)
        if not (isinstance(base, type) and issubclass(cls, base)) or (base is not object and base not in _PLAIN_BASES):
            raise _refuse(f"rebuilds {_describe(cls)} on the base {_describe(base)}")
        if base is object:
            return object.__new__(cls)
        self.loader.check_plain_call(base, (state,))
        made = base.__new__(cls, state)  # type: ignore[call-arg]
        if base.__init__ is not object.__init__:
            base.__init__(made, state)  # type: ignore[call-arg]
        return made

    def newobj(self, cls: Any, *args: Any) -> Any:
        return self.loader.new(cls, args, {})

    def newobj_ex(self, cls: Any, args: Any, kwargs: Any) -> Any:
        return self.loader.new(cls, tuple(args), dict(kwargs))

    def encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        # How protocols 0 and 1 write bytes: str -> bytes through latin1, nothing else.
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise _refuse("encodes text with something other than latin1")
        return text.encode("latin1")

    def iter(self, iterable: Any, *sentinel: Any) -> Any:
        # The one-argument form only, over a built-in container: iter(callable, sentinel)
        # would call a callable until it stops.
        if sentinel or type(iterable) not in (list, tuple):
            raise _refuse(f"iterates over {type(iterable).__name__}")
        return iter(iterable)

    def load_type(self, name: Any) -> Any:
        if name not in _DILL_TYPES:
            raise _refuse(f"asks dill for the type {_describe(name)}")
        from dill._dill import _reverse_typemap

        return _reverse_typemap[name]

    def create_array(self, factory: Any, args: Any, state: Any, npdict: Any = None) -> Any:
        # dill's numpy array helper, rebuilt: ``factory`` must be numpy's _reconstruct as this
        # list offers it, the state is checked like any array's, and no __dict__ is set.
        if factory is not self.loader.wrappers["reconstruct"]:
            raise _refuse(f"builds an array with {_describe(factory)}")
        if npdict is not None:
            raise _refuse("sets attributes of an array")
        array = self.reconstruct(*args)
        self.loader.set_array_state(array, state)
        return array

    def getattr(self, owner: Any, name: Any, *rest: Any) -> Any:
        """What river's pickles fetch by attribute: a bound method of an allowed class on an
        instance of it, a nested class on the list, or one of the named functions. dill passes
        a third argument (a repr it would eval): never read."""
        if type(name) is not str or name.startswith("__") or len(rest) > 1:
            raise _refuse(f"asks for the attribute {_describe(name)}")
        if isinstance(owner, type):
            self.loader.check_class(owner)
            found = inspect.getattr_static(owner, name, None)
            found = found.__func__ if isinstance(found, staticmethod) else found
            if isinstance(found, type) and found in self.allow.classes or id(found) in self.allow.values:
                return found
            raise _refuse(f"asks for {owner.__qualname__}.{name}")
        return self.method(inspect.getattr_static(type(owner), name, None), owner)

    def method(self, function: Any, instance: Any) -> Any:
        """A bound method: ``function`` must be what ``instance``'s class (on the list) has
        under that name, defined by river, a custom module, or random.Random (_RANDOM_METHODS)."""
        function = function.function if isinstance(function, _MethodName) else function
        cls = type(instance)
        self.loader.check_class(cls)
        if not isinstance(function, types.FunctionType) or function.__name__.startswith("__"):
            raise _refuse(f"binds {_describe(function)} to {cls.__qualname__}")
        defined_by = function.__module__.split(".", 1)[0]
        if inspect.getattr_static(cls, function.__name__, None) is not function or not (
            defined_by == "river"
            or defined_by in self.loader.allowed_modules
            or (isinstance(instance, random.Random) and function.__name__ in _RANDOM_METHODS)
        ):
            raise _refuse(f"binds {function.__qualname__} to {cls.__qualname__}")
        return types.MethodType(function, instance)


#: The top-level modules whose names an upload may use, besides RIVER_ML_UNPICKLE_ALLOWED_MODULES.
_TOPS = frozenset({
    "river", "numpy", "scipy", "builtins", "collections", "copy", "copyreg", "datetime", "decimal", "fractions",
    "functools", "operator", "random", "statistics", "_codecs", "dill",
})  # fmt: skip
_PLAIN_BASES = (int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


def _shape_steps(strides: Any, dimensions: int) -> tuple[int, ...]:
    steps = tuple(strides) if isinstance(strides, tuple | list) else ()
    if len(steps) != dimensions or not all(type(step) is int for step in steps):
        raise _refuse(f"gives an array the strides {_describe(strides)}")
    return steps


def _is_bit_generator(cls: type) -> bool:
    import numpy.random

    return issubclass(cls, numpy.random.BitGenerator) and cls is not numpy.random.BitGenerator


class _MethodName:
    """What ``Class.method`` resolves to: not the function, an inert token that only binding
    it to an instance of the class (MethodType, in dill's pickles of bound methods) accepts."""

    def __init__(self, function: types.FunctionType) -> None:
        self.function = function


#: (module, name) -> the _Checks method that stands in for it. numpy moved its helpers from
#: numpy.core to numpy._core (2.0): pickles of either kind name them.
_RECONSTRUCTORS = {
    ("copyreg", "_reconstructor"): "reconstructor",
    ("copyreg", "__newobj__"): "newobj",
    ("copyreg", "__newobj_ex__"): "newobj_ex",
    ("_codecs", "encode"): "encode",
    ("builtins", "iter"): "iter",
    ("builtins", "getattr"): "getattr",
    ("dill._dill", "_getattr"): "getattr",
    ("dill._dill", "_load_type"): "load_type",
    ("dill._dill", "_create_array"): "create_array",
    ("numpy.random._pickle", "__bit_generator_ctor"): "bit_generator",
    ("numpy.random._pickle", "__randomstate_ctor"): "random_state",
    ("numpy.random._pickle", "__generator_ctor"): "generator",
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): "seed_sequence",
    **{
        (f"numpy.{core}.{module}", name): method
        for core in ("core", "_core")
        for module, name, method in (
            ("multiarray", "_reconstruct", "reconstruct"),
            ("multiarray", "scalar", "scalar"),
            ("numeric", "_frombuffer", "frombuffer"),
        )
    },
}


# --- the unpickler ---------------------------------------------------------------------------------

_dispatch: dict[int, Callable[[Any], None]] = pickle._Unpickler.dispatch  # type: ignore[attr-defined]
#: What BUILD may never set state on: it would change the class, module or function for the
#: whole process.
_NOT_INSTANCES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _Loader(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """The pure-Python unpickler with every opcode that resolves, calls, builds or grows
    checked (an upload is loaded once: its speed does not matter)."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(_dispatch)  # type: ignore[misc]
    # What the pure-Python unpickler keeps (typeshed does not declare it).
    stack: list[Any]
    metastack: list[list[Any]]
    proto: int
    fix_imports: bool
    pop_mark: Callable[[], list[Any]]
    append: Callable[[Any], None]

    def __init__(self, data: bytes, allowed_modules: Iterable[str], budget: _Budget) -> None:
        super().__init__(io.BytesIO(data))
        self.allowed_modules = frozenset(allowed_modules)
        self.budget = budget
        self.allow = _allow_list()
        self.own_dtypes: set[int] = set()
        self.loading = False
        checks = _Checks(self)
        self.wrappers = {
            method: self._while_loading(getattr(checks, method)) for method in set(_RECONSTRUCTORS.values())
        }
        self.reconstructors = {key: self.wrappers[method] for key, method in _RECONSTRUCTORS.items()}
        self.callable_ids = {id(function) for function in self.reconstructors.values()}
        self.checks = checks

    def _while_loading(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, refusing to run once the load is over: a model keeping a reconstructor
        as state cannot call it later, outside this upload's budget."""

        @functools.wraps(function)
        def reconstructor(*args: Any) -> Any:
            if not self.loading:
                raise UnsafePickle("A reconstructor of an uploaded pickle was called after the upload was loaded.")
            return function(*args)

        return reconstructor

    def load(self) -> Any:
        self.loading = True
        try:
            return super().load()
        finally:
            self.loading = False

    # names ------------------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.reconstructors:
            return self.reconstructors[(module, name)]
        where = f"{module}.{name}"[:200]
        top = module.split(".", 1)[0]
        if top not in _TOPS and top not in self.allowed_modules:
            raise UnsafePickle(
                f"The upload refers to {where}, outside the modules a model may use (river, numpy, scipy, "
                "the standard containers, and those named in RIVER_ML_UNPICKLE_ALLOWED_MODULES); nothing of it was run."
            )
        loaded = sys.modules.get(module)
        if loaded is None:
            raise UnsafePickle(
                f"The upload refers to {where}, and {module[:100]} is not imported by the server; nothing of it "
                "was run. The server never imports a module to load a pickle: the app must import the modules of "
                "its custom models, and name them in RIVER_ML_UNPICKLE_ALLOWED_MODULES."
            )
        found = self._resolve(loaded, name)
        if found is not None:
            return found
        raise UnsafePickle(
            f"The upload refers to {where}, which is outside the safe list; nothing of it was run. "
            "Models of your own load when the app imports their module and names it in "
            "RIVER_ML_UNPICKLE_ALLOWED_MODULES."
        )

    def _resolve(self, module: types.ModuleType, name: str) -> Any:
        """A class on the list, a named function, or a ``Class.method`` token; None otherwise.
        Attributes are read from ``__dict__``s only: no ``__getattr__`` of a module or class runs."""
        first, *rest = name.split(".")
        found = vars(module).get(first)
        for index, part in enumerate(rest, 1):
            if not (isinstance(found, type) and self.allowed(found)):
                return None
            found = vars(found).get(part)
            if isinstance(found, staticmethod):
                found = found.__func__
            elif isinstance(found, types.FunctionType) and index == len(rest) and not part.startswith("__"):
                return _MethodName(found)
        if isinstance(found, type):
            return found if self.allowed(found) else None
        return found if id(found) in self.allow.values else None

    def allowed(self, cls: type) -> bool:
        if cls in self.allow.classes:
            return True
        # A custom module's own classes (defined there, not imported), loaded by the app.
        defined_in = getattr(cls, "__module__", None) or ""
        top = defined_in.split(".", 1)[0]
        return (
            top in self.allowed_modules
            and "__main__" not in defined_in.split(".")
            and defined_in in sys.modules
            and cls in _defined_classes(sys.modules[defined_in])
            and not _forwards_attributes(cls)
        )

    def check_class(self, cls: Any) -> None:
        if not (isinstance(cls, type) and self.allowed(cls)):
            raise _refuse(f"uses {_describe(cls)} as a class")

    # calls ------------------------------------------------------------------------------------------

    def call(self, function: Any, args: tuple) -> Any:
        """REDUCE, and INST / OBJ with arguments: a listed reconstructor, or a class call."""
        if not isinstance(args, tuple):
            raise _refuse("calls something with arguments that are not a tuple")
        self.budget.charge(_OBJECT_COST + _SLOT_COST * len(args), "a call")
        if id(function) in self.callable_ids:
            return function(*args)
        self.check_class(function)
        cls: type = function
        if cls is types.MethodType:
            return self.checks.method(*args)
        import numpy

        if cls is numpy.ndarray:
            return self.checks.ndarray(*args)
        if cls is numpy.dtype:
            return self.checks.dtype(*args)
        if cls is functools.partial:
            self.check_partial(args[0] if args else None, args[1:], None)
        if cls is collections.defaultdict and args and args[0] is not None:
            self.check_callable_value(args[0])
        if cls in self.allow.callable_river or cls in self.allow.compiled:
            self.check_numbers(cls, args)
        elif cls.__module__.split(".", 1)[0] in self.allowed_modules and self.allowed(cls):
            pass  # the operator's own classes, whose constructors the app trusts
        elif cls.__module__ in ("builtins", "collections", "datetime", "decimal", "fractions", "statistics",
                                "random", "operator", "functools", "numpy"):  # fmt: skip
            self.check_plain_call(cls, args)
        else:
            raise _refuse(f"calls {cls.__qualname__}(...), which river's pickles never do")
        return cls(*args)

    def check_plain_call(self, cls: type, args: tuple) -> None:
        """A standard or numpy class called on plain values only (no object of the upload gets
        to run code), charged for what it allocates."""
        import numpy

        if issubclass(cls, numpy.generic) and any(type(arg) is int for arg in args):
            # numpy.void(400000000) allocates that many bytes; river's scalars come from scalar().
            raise _refuse(f"sizes a numpy {cls.__name__} with a number")
        if cls is functools.partial or cls is collections.defaultdict:
            return  # their callables are checked by call() and load_build()
        if not all(_plain(arg) for arg in args):
            raise _refuse(f"calls {cls.__qualname__} on {[type(arg).__name__ for arg in args]}")
        if issubclass(cls, bytes | bytearray) and args and type(args[0]) is int:
            self.budget.charge(args[0], f"{cls.__name__}({args[0]})")
        if cls is range:
            # Charged as the list it stands for: a model's code may loop over it.
            self.budget.charge(_SLOT_COST * len(range(*args)), "a range")
        if cls is fractions.Fraction and not all(type(arg) is int for arg in args):
            raise _refuse("builds a Fraction from text")  # Fraction("1e99999999") computes 10**99999999
        self.budget.charge(sum(len(arg) for arg in args if isinstance(arg, str | bytes | bytearray)), "a value")

    def check_numbers(self, cls: type, args: tuple) -> None:
        """Compiled and river-called classes take numbers (and VectorDict a dict and flags);
        a window size is charged as that many slots, it may be allocated at once."""
        for arg in args:
            if type(arg) is int:
                self.budget.charge(_SLOT_COST * abs(arg), f"{cls.__qualname__}({arg})")
            elif callable(arg):
                self.check_callable_value(arg)  # VectorDict's default factory
            elif type(arg) not in (type(None), bool, float, dict, cls):
                raise _refuse(f"calls {cls.__qualname__} with {type(arg).__name__}")

    def check_callable_value(self, value: Any) -> None:
        """A callable kept as state (a defaultdict's factory, a partial's function): a class on
        the list, a named function, or an instance of a listed class (a partial, a bound method,
        river's initializers) built through these checks; never one of the reconstructors."""
        if isinstance(value, type):
            self.check_class(value)
        elif id(value) in self.allow.values:
            return
        elif id(value) in self.callable_ids or not (callable(value) and self.allowed(type(value))):
            raise _refuse(f"keeps {_describe(value)} as a function")

    def check_partial(self, function: Any, args: tuple, keywords: dict | None) -> None:
        import numpy

        self.check_callable_value(function)
        try:
            bounds.check_text_step(function, args, keywords, "a text preprocessing step")
        except bounds.OutOfBounds as error:
            raise _out_of_bounds(error) from None
        if function is numpy.ones:
            # LDA keeps partial(numpy.ones, 1): the shape is allocated whenever it is called.
            # Only that form: a shape or dtype given any other way would escape the charge.
            if keywords or len(args) > 1:
                raise _refuse("keeps a partial of numpy.ones with arguments other than a shape")
            if args:
                self.budget.charge(_array_bytes(_shape(args[0]), numpy.dtype(float)), "a partial's array")

    def new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        """NEWOBJ: ``cls.__new__(cls, *args)``, which runs no __init__; arguments only where
        __new__ takes them (tuple subclasses, compiled classes), checked like a call."""
        self.check_class(cls)
        self.budget.charge(_OBJECT_COST + _SLOT_COST * (len(args) + len(kwargs)), "an object")
        if args or kwargs:
            if kwargs and cls not in self.allow.compiled:
                raise _refuse(f"passes keywords to {cls.__qualname__}.__new__")
            if cls in self.allow.compiled:
                self.check_numbers(cls, (*args, *kwargs.values()))
            elif cls is functools.partial or cls is collections.defaultdict:
                # Their pickles call the class; __new__ would take a function unchecked.
                raise _refuse(f"builds a {cls.__qualname__} through __new__ with arguments")
            elif issubclass(cls, tuple):
                self.check_plain_call(tuple, (args,))
            elif cls.__new__ is not object.__new__:
                self.check_plain_call(cls, args)
        return cls.__new__(cls, *args, **kwargs)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        if not isinstance(args, tuple):
            raise _refuse("passes __new__ arguments that are not a tuple")
        self.stack[-1] = self.new(self.stack[-1], args, {})

    def load_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        if not (isinstance(args, tuple) and isinstance(kwargs, dict) and all(type(key) is str for key in kwargs)):
            raise _refuse("passes malformed arguments to __new__")
        self.stack[-1] = self.new(self.stack[-1], args, kwargs)

    def _instantiate(self, klass: Any, args: list) -> None:
        # INST and OBJ (protocols 0 and 1): a call with arguments, __new__ without.
        self.append(self.call(klass, tuple(args)) if args else self.new(klass, (), {}))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    # state ------------------------------------------------------------------------------------------

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        cls = type(target)
        if isinstance(target, _NOT_INSTANCES):
            raise _refuse(f"sets attributes of {_describe(target)}")
        self.check_class(cls)
        import numpy

        if isinstance(target, numpy.ndarray):
            self.set_array_state(target, state)
            return
        if isinstance(target, numpy.dtype):
            self.set_dtype_state(target, state)
            return
        if isinstance(target, numpy.random.BitGenerator | numpy.random.RandomState | numpy.random.SeedSequence):
            _check_random_state(state)
        if cls is functools.partial:
            if not (isinstance(state, tuple) and len(state) == 4 and isinstance(state[1], tuple)):
                raise _refuse("gives a partial a malformed state")
            self.check_partial(state[0], state[1], state[2] or {})
            _no_dunders(state[3])
        setstate = getattr(cls, "__setstate__", None)
        if setstate is not None:
            if isinstance(state, dict):
                _no_dunders(state)
            setstate(target, state)
            return
        attributes, slots = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
        if attributes:
            _no_dunders(attributes)
            # The instance's own __dict__, as pickle does; never a class's.
            vars(target).update(attributes)
        if slots:
            _no_dunders(slots)
            if cls.__setattr__ is not object.__setattr__:
                raise _refuse(f"sets slots of {cls.__qualname__}, whose __setattr__ is its own")
            for key, value in slots.items():
                # A slot, or a plain attribute: never a property or other descriptor, whose
                # setter would run.
                found = inspect.getattr_static(cls, key, None)
                if found is not None and not isinstance(found, types.MemberDescriptorType):
                    raise _refuse(f"sets {cls.__qualname__}.{key}, which is not a slot")
                object.__setattr__(target, key, value)

    dispatch[pickle.BUILD[0]] = load_build

    def set_array_state(self, array: Any, state: Any) -> None:
        """ndarray.__setstate__, once the data is known to match the shape and type."""
        import numpy

        if type(array) is not numpy.ndarray or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse("gives an array a malformed state")
        shape, dtype, _fortran, data = state[-4:]
        checked_shape = _shape(shape)
        if not isinstance(dtype, numpy.dtype):
            raise _refuse("gives an array a type that is not a dtype")
        count = math.prod(checked_shape)
        if dtype.hasobject:
            matches = type(data) is list and len(data) == count
        else:
            matches = type(data) in (bytes, bytearray) and len(data) == count * dtype.itemsize
        if not matches:
            raise _refuse(f"gives an array of shape {checked_shape} and type {dtype} other data")
        self.budget.charge(_array_bytes(checked_shape, dtype), "an array")
        array.__setstate__(state)

    def set_dtype_state(self, dtype: Any, state: Any) -> None:
        """dtype.__setstate__ on a dtype this upload made, for a plain type only: no sub-array,
        fields or names (river's arrays have none), an itemsize within the budget."""
        if id(dtype) not in self.own_dtypes:
            raise _refuse("sets the state of a dtype the process shares")
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[2:5] == (None, None, None)):
            raise _refuse("gives a dtype a structured or malformed state")
        if type(state[5]) is not int or state[5] > self.budget.limit:
            raise _refuse(f"gives a dtype the itemsize {_describe(state[5])}")
        # Alignment and flags as numpy gives this type itself: numpy trusts them (a void dtype
        # flagged as holding a pickled list makes numpy's scalar read raw process memory).
        if tuple(state[6:8]) != tuple(dtype.__reduce__()[2][6:8]):
            raise _refuse("gives a dtype an alignment or flags of another type")
        dtype.__setstate__(state)

    # containers -------------------------------------------------------------------------------------

    def _extend(self, target: Any, items: list) -> None:
        self.budget.charge(_SLOT_COST * len(items), "list items")
        # The type's own method, never an attribute the instance holds.
        if isinstance(target, list):
            list.extend(target, items)
        elif isinstance(target, collections.deque) and type(target) in self.allow.classes:
            type(target).extend(target, items)
        else:
            raise _refuse(f"appends items to {type(target).__name__}")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list) -> None:
        if not isinstance(target, dict):
            raise _refuse(f"sets items of {type(target).__name__}")
        self.budget.charge(_SLOT_COST * len(items), "dict items")
        # The class's own __setitem__ (OrderedDict keeps its order there), never an instance's.
        setitem = type(target).__setitem__
        for index in range(0, len(items) - 1, 2):
            setitem(target, items[index], items[index + 1])

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _refuse(f"adds items to {type(target).__name__}")
        self.budget.charge(_SLOT_COST * 2 * len(items), "set items")
        target.update(items)

    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def _charged(opcode: bytes, slots: int | None = None) -> None:
    """Wrap a container opcode of the loader so that what it builds is charged first: ``slots``
    elements from the stack, or all those above the mark."""
    original = _dispatch[opcode[0]]

    def load(self: _Loader) -> None:
        count = len(self.stack) if slots is None else slots
        self.budget.charge(_OBJECT_COST + _SLOT_COST * 2 * count, "a container")
        original(self)

    _Loader.dispatch[opcode[0]] = load


for _opcode, _slots in (
    (pickle.TUPLE, None), (pickle.LIST, None), (pickle.DICT, None), (pickle.FROZENSET, None),
    (pickle.TUPLE1, 1), (pickle.TUPLE2, 2), (pickle.TUPLE3, 3), (pickle.EMPTY_LIST, 0), (pickle.EMPTY_DICT, 0),
    (pickle.EMPTY_SET, 0), (pickle.EMPTY_TUPLE, 0),
):  # fmt: skip
    _charged(_opcode, _slots)


def _check_random_state(state: Any) -> None:
    """numpy's random generators copy their position fields unchecked: MT19937's ``pos`` past
    624, Philox's ``buffer_pos`` past 4 or a SeedSequence's ``pool_size`` past its pool would
    read memory beyond the generator's. Each position must lie inside its array."""
    import numpy

    pending = [state]
    while pending:
        value = pending.pop()
        if isinstance(value, tuple | list):
            if len(value) == 5 and isinstance(value[2], numpy.ndarray) and type(value[3]) is int:
                # A SeedSequence: (entropy, children spawned, pool, pool size, spawn key).
                if value[3] != value[2].size or value[2].dtype != numpy.uint32 or not 0 < value[3] <= 1024:
                    raise _refuse("gives a seed sequence a pool size that is not its pool's")
            if len(value) == 5 and value[0] == "MT19937" and not (type(value[2]) is int and 0 <= value[2] <= 624):
                raise _refuse(f"gives a random generator the position {_describe(value[2])}")
            pending.extend(value)
        elif isinstance(value, dict):
            for key, limit in (("pos", 624), ("buffer_pos", 4)):
                if key in value and not (type(value[key]) is int and 0 <= value[key] <= limit):
                    raise _refuse(f"gives a random generator the {key} {_describe(value[key])}")
            pending.extend(value.values())


def _no_dunders(state: Any) -> None:
    """State must be a dict of plain attribute names: a dunder (``__reduce_ex__``, ``__class__``,
    ``__dict__``) would change how the server pickles or treats the object later."""
    if state is None:
        return
    if not isinstance(state, dict) or not all(type(key) is str and not key.startswith("__") for key in state):
        raise UnsafePickle(
            "The upload sets special (dunder) or malformed attributes of an object, which is not allowed."
        )


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


def _check_shape(root: Any, max_leaves: int) -> None:
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
                    raise _refuse(f"expands to more than {max_leaves} values through shared references")
            continue
        known = sizes.get(id(part))
        if known is not None or id(part) in path:
            frame[2] += known or 1
        else:
            inner = _parts(part)
            if inner is None:
                frame[2] += 1
            elif len(frames) >= _MAX_DEPTH:
                raise _refuse(f"nests objects more than {_MAX_DEPTH} levels deep")
            else:
                path.add(id(part))
                frames.append([part, inner, 1, _check_bounds(part, frame[3])])
        if frame[2] > max_leaves:
            raise _refuse(f"expands to more than {max_leaves} values through shared references")


_END = object()


def _check_bounds(value: Any, sizes: bounds.Sizes) -> bounds.Sizes:
    try:
        return bounds.check_loaded(value, sizes)
    except bounds.OutOfBounds as error:
        raise _out_of_bounds(error) from None


def _out_of_bounds(error: bounds.OutOfBounds) -> UnsafePickle:
    return UnsafePickle(
        f"The upload's model asks for more than the server allows: {str(error).rstrip('.')}. Nothing of it was run."
    )


def safe_loads(data: bytes, allowed_modules: Iterable[str] = (), max_bytes: int | None = None) -> Any:
    """Unpickle an uploaded model under the allow-list (see the module docstring).

    ``max_bytes`` is RIVER_ML_UPLOAD_MAX_BYTES: a longer upload is refused, and what the
    pickle may allocate is a fixed multiple of its size.
    """
    if not isinstance(data, bytes | bytearray):
        raise UnsafePickle("The upload is not bytes.")
    budget = _budget(len(data), max_bytes)
    budget.charge(len(data), "the pickle's own strings and bytes")
    try:
        model = _Loader(bytes(data), allowed_modules, budget).load()
        _check_shape(model, budget.limit // _SLOT_COST)
        return model
    except UnsafePickle:
        raise
    except INTERPRETER_EXITS:
        raise
    except BaseException as error:  # noqa: BLE001 - a Rust panic is a BaseException; any failure is the upload's
        # Never repr(error): its arguments may be the upload's objects, whose repr is their code.
        description = ", ".join(_describe(arg) for arg in error.args[:3])
        raise UnsafePickle(
            f"The upload is not a loadable pickle of a model: {type(error).__name__}({description})"
        ) from None

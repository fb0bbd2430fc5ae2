"""What an upload may name: the audited classes, the few functions models keep as state, and
the reconstructors that stand in for the callables pickles name, each listed for a reason."""

from __future__ import annotations

import collections
import copy
import datetime
import decimal
import fractions
import functools
import importlib
import operator
import random
import statistics
import sys
import types
from typing import Any

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
    # Bound methods are pickled as MethodType(function, instance); StandardChecks.method checks both.
    types.MethodType,
)  # fmt: skip
#: Methods of a random generator that models keep bound (river's KMeans keeps ``rng.gauss``).
RANDOM_METHODS = frozenset({"gauss", "random", "uniform", "randint", "normalvariate", "choice", "shuffle", "sample"})
#: dill names some types instead of pickling them by reference: the inert ones it may name.
DILL_TYPES = frozenset({
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "object", "set",
    "slice", "str", "tuple", "NoneType", "MethodType", "PartialType", "ItemGetterType", "MethodDescriptorType",
})  # fmt: skip

#: The top-level modules whose names an upload may use, besides RIVER_ML_UNPICKLE_ALLOWED_MODULES.
TOPS = frozenset({
    "river", "numpy", "scipy", "builtins", "collections", "copy", "copyreg", "datetime", "decimal", "fractions",
    "functools", "operator", "random", "statistics", "_codecs", "dill",
})  # fmt: skip
#: The built-in bases copyreg's reconstructor may build an instance on, from a plain state.
PLAIN_BASES = (int, float, complex, str, bytes, tuple, list, dict, set, frozenset)
#: Scalar types, whose construction runs no code of the upload's.
PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)


def forwards_attributes(cls: type) -> bool:
    """Whether instances of ``cls`` compute their attributes in Python (``__getattr__`` or a
    ``__getattribute__`` of its own): such a class can hand out anything it can reach."""
    return any(
        isinstance(vars(klass).get(name), types.FunctionType)
        for klass in cls.__mro__
        for name in ("__getattr__", "__getattribute__")
    )


def defined_classes(module: types.ModuleType) -> list[type]:
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

    scalars: list[type] = []
    pending: list[type] = [numpy.generic]
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
            for cls in defined_classes(module)
            if not forwards_attributes(cls) and not issubclass(cls, BaseException)
        )
    return classes


class AllowList:
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
def allow_list() -> AllowList:
    return AllowList()


#: (module, name) -> the method of :class:`~.checks.Checks` that stands in for it. numpy moved
#: its helpers from numpy.core to numpy._core (2.0): pickles of either kind name them.
RECONSTRUCTORS = {
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

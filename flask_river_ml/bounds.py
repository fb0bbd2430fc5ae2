"""The bounds on what a model's parameters may ask for, wherever the model comes from.

A model built from a JSON description and a model unpickled from an upload obey the same
bounds: their parameters size what they allocate, and what they compute per sample, long
after the upload (a river ensemble clones its parameters' estimators as it learns, a
``BagOfWords`` runs its tokenizer pattern on every text). Counts are capped one by one and
multiplied along nested estimators; tokenizer patterns are held to a form that scans a text
in linear time; n-gram lengths are bounded.
"""

from __future__ import annotations

import inspect
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Where a model multiplies a sample's features, and the bound on it, have their own module;
# they are part of this one's interface.
from .expansion import MAX_TERMS as MAX_TERMS
from .expansion import Plan as Plan
from .expansion import check_expansion as check_expansion
from .expansion import expansion_plan as expansion_plan
from .expansion import instance_state
from .expansion import widest as widest

try:  # Python 3.11 renamed the regular expression parser.
    import re._constants as _sre  # type: ignore[import-not-found]
    import re._parser as _parser  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

#: The largest integer a parameter may be given, unless it is the parameter's default or a seed.
MAX_INTEGER = 1_000_000
#: Parameters that multiply what a model allocates or computes (ensemble members, components,
#: clusters, orders of a time series, thresholds, samples drawn), with their own caps.
COUNT_CAPS = {
    "n_models": 100, "n_estimators": 100, "n_trees": 100, "code_size": 100, "degree": 10,
    "n_components": 10_000, "n_clusters": 10_000, "n_thresholds": 10_000,
    "p": 100, "d": 100, "q": 100, "sp": 100, "sd": 100, "sq": 100,
    # LDA draws number_of_samples Gibbs samples, after burn_in_sweeps, over its components for
    # every word: they multiply its work per sample.
    "number_of_samples": 1000, "burn_in_sweeps": 1000,
}  # fmt: skip
#: Parameters that size what a model allocates per feature or computes per sample (factors of
#: a factorization machine, bins of a histogram, neighbours searched, samples drawn), capped
#: one by one: they do not multiply each other.
SIZE_CAPS = {
    "n_factors": 1000, "n_bins": 10_000, "n_splits": 1000, "max_bins": 10_000, "n_random_cuts": 10_000,
    "n_neighbors": 1000, "graph_k": 1000, "n_iters": 1000, "max_micro_clusters": 10_000,
    "n_macro_clusters": 1000, "max_iter_e_step": 1000,
    "maximum_size_vocabulary": 100_000, "k": 10_000, "m": 10_000, "capacity": 2**24,
}  # fmt: skip
#: Parameters that double what a model allocates per unit (a tree of height h has 2**(h+1) - 1
#: nodes), with their caps.
EXPONENT_CAPS = {"height": 20}
#: The most allocation units one estimator may ask for: the product of its counts and of 2 to
#: the power of its exponents, along every path of nested descriptions.
MAX_UNITS = 2**18
#: Parameters whose values are ensemble members, each a model built at construction.
MEMBER_COUNTS = ("n_models", "n_estimators", "n_trees", "code_size")
#: The most ensemble members a description may ask for, multiplied along nested ensembles
#: (about a millisecond each to build for river's forests).
MAX_MEMBERS = 1000
#: Float parameters whose small values size an allocation (sketch.Counter keeps e/epsilon
#: counters per row, sketch.Set -ln(fp_rate) bits per item, ln(1/delta) rows), with floors.
FLOAT_FLOORS = {"epsilon": 1e-5, "fp_rate": 1e-6, "delta": 1e-12}
#: The longest n-gram a text model may count (river's find_ngrams keeps one iterator per word).
MAX_NGRAM = 10
#: The longest tokenizer pattern.
MAX_PATTERN_CHARS = 200
#: The most work a pattern may do at one position of a text before its unbounded repeat: the
#: ways its bounded repeats may be tried (the product of their ranges) times the characters
#: they may take together.
MAX_PATTERN_WORK = 256
#: The most stop words a text model may keep in a list (a set is searched at once).
MAX_STOP_WORD_LIST = 1000
#: Ensemble members and allocation units asked for so far along a path of estimators.
Sizes = tuple[int, int]

_SEED = re.compile(r"(^|_)seed$|^random_state$")
_CHARACTER = {_sre.LITERAL, _sre.NOT_LITERAL, _sre.IN, _sre.ANY}
_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", _sre.MAX_REPEAT)}


class OutOfBounds(ValueError):
    """A parameter asks for more than its bound; the message names it and the bound."""


def is_int(value: Any) -> bool:
    """An integer, numpy's included (an upload may hold ``np.int64(10**6)`` where an int goes,
    and river uses it as one); not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(value: int, name: str, default: Any, where: str) -> None:
    """An integer over :data:`MAX_INTEGER` only as the parameter's default or a seed (a size
    of that order would be allocated, or looped over, by the model)."""
    bound = 2**63 if _SEED.search(name) else MAX_INTEGER
    if abs(value) > bound and not (is_int(default) and value == default):
        raise OutOfBounds(
            f"{where}: the integer {value} is too large; integers are bounded by {bound} (seeds by 2**63)."
        )


def check_parameters(signature: inspect.Signature, params: Mapping[str, Any], label: str, sizes: Sizes) -> Sizes:
    """The members and units along a path after an estimator with ``params``; refuses counts,
    sizes, floors, patterns and n-gram ranges out of bounds. Other integers are left to
    :func:`check_integer`, which a description applies to each of its values (an ensemble
    gives its members' parameters values that are not their defaults)."""
    units = 1
    for name, value in params.items():
        default = _default(signature, name)
        if name == "tokenizer_pattern" and value != default:
            check_pattern(value, f"{label}: tokenizer_pattern")
        elif name == "ngram_range" and value != default:
            check_ngram_range(value, f"{label}: ngram_range")
        elif name == "stop_words" and value is not None:
            check_stop_words(value, f"{label}: stop_words")
        if not is_int(value):
            if isinstance(value, float) and name in FLOAT_FLOORS and value != default:
                if 0 < value < FLOAT_FLOORS[name]:
                    raise OutOfBounds(
                        f"{label}: {name}={value} is below {FLOAT_FLOORS[name]}, which would allocate too much."
                    )
            continue
        cap = COUNT_CAPS.get(name, SIZE_CAPS.get(name, EXPONENT_CAPS.get(name)))
        if cap is None:
            continue
        if not 0 <= value <= cap:
            raise OutOfBounds(f"{label}: {name}={value} is out of bounds; it must be between 0 and {cap}.")
        units *= _units(name, int(value))
    for name in (*EXPONENT_CAPS, *COUNT_CAPS):
        default = _default(signature, name)
        if name not in params and is_int(default):
            units *= _units(name, default)
    members = sizes[0] * _member_count(signature, params)
    units *= sizes[1]
    if members > MAX_MEMBERS:
        raise OutOfBounds(
            f"{label}: the ensemble sizes asked for (n_models, n_estimators, n_trees, code_size) multiply to "
            f"{members} members along nested ensembles, more than {MAX_MEMBERS}; use fewer."
        )
    if units > MAX_UNITS:
        raise OutOfBounds(
            f"{label}: the sizes asked for (ensemble members, tree heights, components...) multiply to "
            f"{units} units, more than {MAX_UNITS}; use fewer or smaller ones."
        )
    return members, units


def _units(name: str, value: int) -> int:
    """The allocation units a capped parameter asks for: 2**(value + 1) for an exponent, the
    value for a count, none for a size (sizes are capped one by one)."""
    if name in EXPONENT_CAPS:
        return 2 ** (value + 1)
    return max(value, 1) if name in COUNT_CAPS else 1


def check_ngram_range(value: Any, where: str) -> None:
    """An n-gram range: river's ``(min_n, max_n)`` parameter, or the lengths its preprocessing
    step iterates over (a range, or any iterable of lengths), each between 0 and MAX_NGRAM."""
    lengths = list(value) if isinstance(value, range | list | tuple) and len(value) <= MAX_NGRAM + 1 else None
    if lengths is None or not all(is_int(n) and 0 <= n <= MAX_NGRAM for n in lengths):
        raise OutOfBounds(f"{where}: n-gram lengths are at most {MAX_NGRAM}, such as (1, 2).")


def check_stop_words(words: Any, where: str) -> None:
    """Stop words: a set or frozenset (each token is looked up in it), or a short list or
    tuple (each token is compared with every word)."""
    if not isinstance(words, set | frozenset) and not (
        isinstance(words, list | tuple) and len(words) <= MAX_STOP_WORD_LIST
    ):
        raise OutOfBounds(f"{where}: stop words are a set, or a list of at most {MAX_STOP_WORD_LIST} words")


def check_pattern(pattern: Any, where: str) -> None:
    """A tokenizer pattern that finds its matches in linear time.

    Python's regular expressions backtrack: ``(a+)+$`` takes exponential time on a line of
    a's, and even ``\\w+x`` takes quadratic time to scan a long word for matches. A pattern is
    accepted when it is a sequence of single-character items (a character, a class, ``.``),
    each possibly repeated a bounded number of times, and zero-width assertions, with at most
    one unbounded repeat, of a single-character item, at its end, followed by nothing but
    ``\\b``, and then only if the pattern also begins with ``\\b`` (river's default,
    ``(?u)\\b\\w[\\w\\-]+\\b``, is one). Groups may wrap items; alternatives, back-references
    and look-arounds are refused.
    """
    fix = (
        "use a sequence of characters and character classes with at most one unbounded repeat, at the end, "
        r"such as (?u)\b\w[\w\-]+\b or \S+"
    )
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
        raise OutOfBounds(f"{where}: a tokenizer pattern is a string of at most {MAX_PATTERN_CHARS} characters.")
    try:
        items = list(_flatten(_parser.parse(pattern)))
    except (re.error, OutOfBounds, OverflowError, RecursionError) as error:
        raise OutOfBounds(f"{where}: {pattern!r} is not allowed ({error}); {fix}.") from None
    unbounded = [i for i, (op, av) in enumerate(items) if op in _REPEATS and av[1] == _sre.MAXREPEAT]
    choices, span = 1, 0
    for op, av in items:
        if op in _REPEATS and av[1] != _sre.MAXREPEAT:
            choices, span = choices * (av[1] - av[0] + 1), span + av[1]
        else:
            span += 1
    tail = items[unbounded[0] + 1 :] if unbounded else []
    boundary = (_sre.AT, _sre.AT_BOUNDARY)
    safe = (
        choices * span <= MAX_PATTERN_WORK
        and len(unbounded) <= 1
        and (not tail or (tail == [boundary] and items[0] == boundary))
    )
    if not safe:
        raise OutOfBounds(f"{where}: {pattern!r} may take more than linear time to scan a text; {fix}.")


def _flatten(items: Iterable[Any]) -> Iterable[tuple[Any, Any]]:
    """The items of a parsed pattern with its groups opened; refuses what is not a single
    character, a repeat of one, or an assertion."""
    for op, av in items:
        if op is _sre.SUBPATTERN:
            yield from _flatten(av[-1])
        elif op in _REPEATS:
            body = list(av[2])
            if len(body) == 1 and body[0][0] is _sre.SUBPATTERN:
                body = list(_flatten(body[0][1][-1]))
            if len(body) != 1 or body[0][0] not in _CHARACTER:
                raise OutOfBounds("a repeat of more than one character")
            yield op, av
        elif op in _CHARACTER or op is _sre.AT:
            yield op, av
        else:
            raise OutOfBounds(f"{str(op).lower()} is not allowed in a tokenizer pattern")


def check_text_step(function: Any, args: tuple, keywords: Mapping[str, Any] | None, where: str) -> None:
    """A preprocessing step of river's text models (a partial of one of its functions): the
    argument each takes by name, within its bounds, and no positional argument (which would
    shift the text itself into the pattern's place). ``keywords`` is None for a partial whose
    state is still to come (a pickled partial is called with its function alone)."""
    from river.feature_extraction import vectorize

    checks = {
        vectorize.tokenize_using_regex_pattern: ("pattern", check_pattern),
        vectorize.find_ngrams: ("n", lambda n, at: check_ngram_range([n], at)),
        vectorize.find_all_ngrams: ("ngram_range", check_ngram_range),
        vectorize.remove_stop_words: ("stop_words", check_stop_words),
    }
    if function not in checks:
        return
    name, check = checks[function]
    if keywords is None and not args:
        return
    if args or keywords is None or set(keywords) != {name}:
        raise OutOfBounds(f"{where}: {function.__name__} takes {name} by keyword, and nothing else")
    check(keywords[name], f"{where}: {function.__name__}")


def check_loaded(value: Any, sizes: Sizes) -> Sizes:
    """The bounds of an estimator that was not built from its parameters (an upload): the
    parameters it keeps as attributes, read without running its code, with the members and
    units of the estimators that hold it (``sizes``, what a clone of it would build); the
    sizes along the path below it. Anything but an estimator keeps ``sizes``."""
    from river import base

    if not isinstance(value, base.Base):
        return sizes
    signature, state = _init_signature(type(value)), instance_state(value)
    if signature is None:
        return sizes
    params = {name: state[name] for name in signature.parameters if name in state}
    return check_parameters(signature, params, type(value).__name__, sizes)


_SIGNATURES: dict[type, inspect.Signature | None] = {}


def _init_signature(cls: type) -> inspect.Signature | None:
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = inspect.signature(cls)
        except (TypeError, ValueError):
            _SIGNATURES[cls] = None
    return _SIGNATURES[cls]


def _default(signature: inspect.Signature, name: str) -> Any:
    parameter = signature.parameters.get(name)
    return None if parameter is None else parameter.default


def _member_count(signature: inspect.Signature, params: Mapping[str, Any]) -> int:
    members = 1
    for name in MEMBER_COUNTS:
        value = params.get(name, _default(signature, name))
        if is_int(value):
            members *= max(int(value), 1)
    return members

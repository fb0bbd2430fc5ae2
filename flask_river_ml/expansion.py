"""How many features a model holds at once for a sample, read from the model's own state.

Some steps multiply a sample's features: a ``PolynomialExtender`` of degree d turns n features
into about n**d / d! terms, a ``TransformerProduct`` multiplies its parts', a factorization
machine loops over every combination of them, an ``RBFSampler`` makes ``n_components`` of
each. :func:`expansion_plan` reads, once per model, where a model does so, and
:func:`check_expansion` refuses a sample it would expand past :data:`MAX_TERMS`.

The plan is read without running the model's code, and without trusting its state: an upload's
attributes are what it says they are. Every estimator the model holds is followed, wherever it
is kept (its parameters, its ensemble members, a ``Grouper``'s copies and the factory it makes
them with), each once however often it is referred to; a value the plan cannot make sense of
is read the way that counts the most terms, or left to river's own code, which fails on it on
the first sample (the server answers that with 400).
"""

from __future__ import annotations

import collections
import functools
import math
import numbers
from typing import Any

#: The most features a sample may become inside a model (100 000 terms take a fifth of a
#: second to build and learn; a degree of 2 on 1000 features, half a million, 1.2 s and 115 MB
#: per sample).
MAX_TERMS = 100_000
#: Where a model multiplies its features: None where it does not (each step passes on as many
#: features as it is given), else a step's kind and its parts or parameters.
Plan = tuple[str, Any] | None
#: The plan of a model whose state could not be read: it refuses every sample.
UNREADABLE: Plan = ("unreadable", None)
#: Counts saturate past twice the bound, which is all a refusal needs to know.
_SATURATED = 2 * MAX_TERMS + 1
#: The plan of an estimator while the plans of what it holds are being read (a cycle back to
#: it counts as a step that does not multiply).
_PENDING = ("pending", None)


def expansion_plan(model: Any) -> Plan:
    """Where ``model`` multiplies the features of a sample, read once from its state (its
    parameters and members do not change as it learns)."""
    try:
        return _read(model)
    except Exception:  # noqa: BLE001 - a state no reading foresaw must not fail every request with 500
        return UNREADABLE


def check_expansion(plan: Plan, features: int) -> None:
    """Refuses a sample of ``features`` features that the model would expand beyond
    :data:`MAX_TERMS` anywhere along its steps (a sample's own features are bounded apart)."""
    if plan is None:
        return
    from .bounds import OutOfBounds  # bounds imports this module

    if plan == UNREADABLE:
        raise OutOfBounds(
            "This model's state could not be read to bound how far it expands a sample, so it refuses every "
            "sample; create it again from its description."
        )
    peak = widest(plan, features)
    if peak > max(MAX_TERMS, features):
        raise OutOfBounds(
            f"The model would expand these {features} features into {'more than ' if peak > 2 * MAX_TERMS else ''}"
            f"{min(peak, 2 * MAX_TERMS)} terms (its polynomial extenders, products, interactions or kernel "
            f"features), more than {MAX_TERMS}; send fewer features, or use a model of a lower degree."
        )


def widest(plan: Plan, features: int) -> int:
    """The most features the model holds at once for a sample of ``features`` features (past
    twice :data:`MAX_TERMS`, that bound), when each step without a plan passes on as many as it
    is given."""
    return _widths(plan, features)[1]


def _read(root: Any) -> Plan:
    """The plan of ``root``, each estimator's computed once from the plans of those it holds,
    depth first without recursion (trees nest their nodes deep)."""
    from river import base

    if not isinstance(root, base.Base):
        return None
    plans: dict[int, Plan] = {}
    held: dict[int, list[Any]] = {}
    containers: dict[int, list[Any]] = {}
    stack = [root]
    while stack:
        value = stack[-1]
        key = id(value)
        if key not in plans:
            plans[key] = _PENDING
            held[key] = members = _members(value, containers)
            stack.extend(member for member in reversed(members) if id(member) not in plans)
            continue
        stack.pop()
        if key in held:  # its members are read (another entry of it may follow, already done)
            plans[key] = _step(value, [plans[id(member)] for member in held.pop(key)])
    return plans[id(root)]


@functools.cache
def _kinds() -> dict[str, tuple[type, ...]]:
    from river import compose, facto, feature_extraction, preprocessing

    return {
        # Steps whose plan is read from their parameters alone: what else they keep, they never run.
        "leaf": (
            feature_extraction.PolynomialExtender, facto.base.BaseFM, feature_extraction.RBFSampler,
            feature_extraction.RandomTreesEmbedding, preprocessing.GaussianRandomProjector,
            preprocessing.SparseRandomProjector, preprocessing.GapEncoder, preprocessing.LDA,
        ),
        "flow": (compose.Pipeline, compose.TransformerUnion),
    }  # fmt: skip


def _members(value: Any, containers: dict[int, list[Any]]) -> list[Any]:
    """The estimators ``value`` holds, in order: a pipeline's steps, a union's parts, or for
    any other estimator every one kept in its state (a list or dict of river's, such as an
    ensemble's members or a chain's, is kept there as ``data``)."""
    from river import compose

    cls, state = type(value), instance_state(value)
    if issubclass(cls, _kinds()["leaf"]):
        return []
    if issubclass(cls, _kinds()["flow"]):
        steps = state.get("steps" if issubclass(cls, compose.Pipeline) else "transformers")
        return _found(steps, containers) if isinstance(steps, dict) else []
    found = [member for kept in state.values() for member in _found(kept, containers)]
    if isinstance(value, list | tuple | dict):
        found += _opened(value, containers)
    # Once each: a Grouper keeps its transformer as a parameter and in its copies' factory.
    return list({id(member): member for member in found}.values())


def _found(kept: Any, containers: dict[int, list[Any]]) -> list[Any]:
    """The estimators ``kept`` is or holds: itself, or those in it if it is a container."""
    from river import base

    return [kept] if isinstance(kept, base.Base) else _opened(kept, containers)


def _opened(kept: Any, containers: dict[int, list[Any]]) -> list[Any]:
    """The estimators in ``kept``, opened one level deep: the items of a list, tuple or dict,
    and a defaultdict's factory; the function and arguments of a ``functools.partial`` (a
    ``Grouper`` makes its copies with one), there or as an item. Each container is opened
    once, however many estimators share it."""
    from river import base

    if not isinstance(kept, list | tuple | dict | functools.partial):
        return []
    key = id(kept)
    if key not in containers:
        items = _items(kept)
        containers[key] = [
            member for item in items for member in (
                [item] if isinstance(item, base.Base) else _items(item) if isinstance(item, functools.partial) else []
            ) if isinstance(member, base.Base)
        ]  # fmt: skip
    return containers[key]


def _items(kept: list | tuple | dict | functools.partial) -> list[Any]:
    # By the built-in types' own methods: a subclass's may do anything.
    if isinstance(kept, functools.partial):
        keywords = kept.keywords
        return [kept.func, *tuple.__iter__(kept.args), *(dict.values(keywords) if isinstance(keywords, dict) else ())]
    if isinstance(kept, dict):
        factory = kept.default_factory if isinstance(kept, collections.defaultdict) else None
        return [*dict.values(kept), factory]
    return [*list.__iter__(kept)] if isinstance(kept, list) else [*tuple.__iter__(kept)]


def _step(value: Any, parts: list[Plan]) -> Plan:
    """The plan of ``value`` given those of the estimators it holds; by type, since river makes
    a pipeline an instance of its last step's class."""
    from river import base, compose

    cls, state = type(value), instance_state(value)
    parts = [None if part == _PENDING else part for part in parts]
    if issubclass(cls, _kinds()["leaf"]):
        return _leaf(cls, state)
    if issubclass(cls, compose.Pipeline):
        return ("chain", parts) if any(parts) else None
    # A TransformerProduct is a TransformerUnion that multiplies its parts' features.
    if issubclass(cls, compose.TransformerProduct):
        return "product", parts
    if issubclass(cls, compose.TransformerUnion):
        return ("sum", parts) if any(parts) else None
    # A transformer passes on what the transformers it holds make (a Grouper, its copy's
    # output); another estimator passes nothing on. Nested alike, they read as one.
    kind = "wrapper" if issubclass(cls, base.Transformer) else "inner"
    flat = [inner for part in parts if part for inner in (part[1] if part[0] == kind else [part])]
    return (kind, flat) if flat else None


def _leaf(cls: type, state: dict) -> Plan:
    """The plan of a step whose expansion its parameters set. A parameter that is no integer
    makes river's own code fail on the first sample; a flag counts as set only where that
    counts the most terms (``bool()`` of an upload's value may raise, or lie)."""
    from river import facto, feature_extraction

    if issubclass(cls, feature_extraction.PolynomialExtender):
        degree = _integer(state.get("degree"))
        if degree is None:
            return None
        return "polynomial", (degree, state.get("interaction_only") is True, state.get("include_bias") is not False)
    if issubclass(cls, facto.base.BaseFM):
        # Every factorization machine loops over each pair of features; HOFM over each
        # combination of 2 to degree of them.
        degree = _integer(state.get("degree")) if issubclass(cls, facto.hofm.HOFM) else 2
        return None if degree is None else ("combinations", degree)
    if issubclass(cls, feature_extraction.RBFSampler):
        # n_components features for each of the sample's, from a list of weights per feature:
        # those an upload already holds are used as they are.
        weights = state.get("weights")
        lengths = [len(w) for w in dict.values(weights) if type(w) is list] if isinstance(weights, dict) else []
        return "per_feature", max([_integer(state.get("n_components")) or 0, *lengths])
    if issubclass(cls, feature_extraction.RandomTreesEmbedding):
        # One feature per tree: those an upload holds, until a new feature makes n_trees.
        trees = state.get("trees")
        return "fixed", max(_integer(state.get("n_trees")) or 0, len(trees) if type(trees) is list else 0)
    # Projectors and topic models make n_components features, whatever they are given.
    width = _integer(state.get("n_components"))
    return None if width is None else ("fixed", width)


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is an integer (numpy's included), else None."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def instance_state(value: Any) -> dict:
    """The attributes an instance holds, read without running its code (its class's
    ``__getattr__`` or properties)."""
    try:
        state = object.__getattribute__(value, "__dict__")
    except AttributeError:
        return {}
    return state if isinstance(state, dict) else {}


def _widths(plan: Plan, n: int) -> tuple[int, int]:
    """The features a step passes on when given ``n``, and the most it holds at once; both
    saturate past twice :data:`MAX_TERMS`."""
    if plan is None:
        return n, n
    kind, parts = plan
    if kind == "polynomial":
        count = min(_terms(n, *parts), _SATURATED)
        return count, max(n, count)
    if kind == "combinations":
        return n, max(n, _combinations(n, parts))
    if kind in ("fixed", "per_feature"):
        width = max(min(parts * (n if kind == "per_feature" else 1), _SATURATED), 0)
        return width, max(n, width)
    if kind == "unreadable":
        return _SATURATED, _SATURATED
    if kind == "chain":
        width, peak = n, n
        for part in parts:
            width, held = _widths(part, width)
            peak = max(peak, held)
        return width, peak
    widths = [_widths(part, n) for part in parts]
    peak = max([n, *(held for _, held in widths)])
    if kind == "inner":
        return n, peak
    outs = [out for out, _ in widths]
    if kind == "wrapper":
        width = max([n, *outs])
    elif kind == "sum":
        width = min(sum(outs), _SATURATED)
    else:
        width = 1
        for out in outs:
            width = min(width * out, _SATURATED)
    return width, max(peak, width)


def _terms(n: int, degree: int, interaction_only: bool, include_bias: bool) -> int:
    """The terms of a polynomial of ``degree`` on ``n`` features (river's powerset of sizes 1 to
    degree, with replacement unless interaction_only), plus the bias; saturating."""
    if n <= 1 and not interaction_only:
        return max(n * degree, 0) + include_bias  # one feature: one term per degree
    count = 0
    for k in range(1, degree + 1):
        if interaction_only and k > n or count > _SATURATED:
            break
        count += math.comb(n, k) if interaction_only else math.comb(n + k - 1, k)
    return count + include_bias


def _combinations(n: int, degree: int) -> int:
    """The combinations of 2 to ``degree`` of ``n`` features a factorization machine loops
    over; saturating."""
    count = 0
    for k in range(2, min(degree, n) + 1):
        if count > _SATURATED:
            break
        count += math.comb(n, k)
    return min(count, _SATURATED)

"""Which classes a description may name, and what a name resolves to: river's public classes by
path or short name, and the classes of the modules the operator allowed, looked up in the
namespace of an imported module only."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..errors import InvalidSpec

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


@dataclass(frozen=True)
class Classes:
    """What class names resolve to: river's public classes by path and by short name."""

    by_path: dict[str, type] = field(default_factory=dict)
    by_name: dict[str, list[type]] = field(default_factory=dict)


def _forbidden(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in RIVER_FORBIDDEN)


def _forwards_attributes(cls: type) -> bool:
    return any("__getattr__" in vars(k) or "__getattribute__" in vars(k) for k in cls.__mro__ if k is not object)


@cache
def river_classes() -> Classes:
    """river's public classes, once its packages of :data:`RIVER_PACKAGES` are imported."""
    from river import base

    for package in RIVER_PACKAGES:
        importlib.import_module(f"river.{package}")
    classes = Classes()
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
    paths = [path for path, value in river_classes().by_path.items() if value is cls]
    return min(paths, key=len) if paths else f"{cls.__module__}.{cls.__qualname__}"


class Names:
    """The names one build may use: river's public classes, and the allowed modules'."""

    def __init__(self, allowed_modules: Iterable[str]) -> None:
        self.allowed = {module.split(".", 1)[0] for module in allowed_modules}
        self.classes = river_classes()

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

"""What a name in an upload resolves to: a class on the list, a named function, or a
``Class.method`` token; never a module attribute read through code, never an import."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from typing import Any

from ..errors import UnsafePickle
from .allowlist import TOPS, AllowList, allow_list, defined_classes, forwards_attributes
from .refusals import describe, refuse


class MethodName:
    """What ``Class.method`` resolves to: not the function, an inert token that only binding
    it to an instance of the class (MethodType, in dill's pickles of bound methods) accepts."""

    def __init__(self, function: types.FunctionType) -> None:
        self.function = function


class Names:
    """The names one upload may use: the allow-list, and the modules the operator allowed."""

    def __init__(self, allowed_modules: Iterable[str]) -> None:
        self.allowed_modules = frozenset(allowed_modules)
        self.allow: AllowList = allow_list()

    def find(self, module: str, name: str) -> Any:
        """What ``module.name`` resolves to, or an :class:`UnsafePickle` saying why nothing does."""
        where = f"{module}.{name}"[:200]
        top = module.split(".", 1)[0]
        if top not in TOPS and top not in self.allowed_modules:
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
                return MethodName(found)
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
            and cls in defined_classes(sys.modules[defined_in])
            and not forwards_attributes(cls)
        )

    def check_class(self, cls: Any) -> None:
        if not (isinstance(cls, type) and self.allowed(cls)):
            raise refuse(f"uses {describe(cls)} as a class")

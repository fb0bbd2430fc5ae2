"""The reconstructors of the standard library's and dill's pickles (copyreg's, codecs', builtins'
and dill's helpers), and the bound methods river's pickles fetch by attribute."""

from __future__ import annotations

import inspect
import random
import types
from typing import TYPE_CHECKING, Any

from .allowlist import DILL_TYPES, PLAIN_BASES, RANDOM_METHODS, AllowList
from .names import MethodName, Names
from .refusals import describe, refuse

if TYPE_CHECKING:
    from .loader import Loader


class StandardChecks:
    """The reconstructors of copyreg, codecs, builtins and dill, and bound methods."""

    loader: Loader
    allow: AllowList
    names: Names

    def reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """copyreg._reconstructor (protocols 0 and 1): ``object.__new__(cls)``, or a built-in
        base's constructor on a plain state."""
        self.names.check_class(cls)
        if not (isinstance(base, type) and issubclass(cls, base)) or (base is not object and base not in PLAIN_BASES):
            raise refuse(f"rebuilds {describe(cls)} on the base {describe(base)}")
        if base is object:
            return object.__new__(cls)
        self.loader.calls.check_plain_call(base, (state,))
        made = base.__new__(cls, state)  # type: ignore[call-arg]
        if base.__init__ is not object.__init__:
            base.__init__(made, state)  # type: ignore[call-arg]
        return made

    def newobj(self, cls: Any, *args: Any) -> Any:
        return self.loader.calls.new(cls, args, {})

    def newobj_ex(self, cls: Any, args: Any, kwargs: Any) -> Any:
        return self.loader.calls.new(cls, tuple(args), dict(kwargs))

    def encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        # How protocols 0 and 1 write bytes: str -> bytes through latin1, nothing else.
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise refuse("encodes text with something other than latin1")
        return text.encode("latin1")

    def iter(self, iterable: Any, *sentinel: Any) -> Any:
        # The one-argument form only, over a built-in container: iter(callable, sentinel)
        # would call a callable until it stops.
        if sentinel or type(iterable) not in (list, tuple):
            raise refuse(f"iterates over {type(iterable).__name__}")
        return iter(iterable)

    def load_type(self, name: Any) -> Any:
        if name not in DILL_TYPES:
            raise refuse(f"asks dill for the type {describe(name)}")
        from dill._dill import _reverse_typemap

        return _reverse_typemap[name]

    def getattr(self, owner: Any, name: Any, *rest: Any) -> Any:
        """What river's pickles fetch by attribute: a bound method of an allowed class on an
        instance of it, a nested class on the list, or one of the named functions. dill passes
        a third argument (a repr it would eval): never read."""
        if type(name) is not str or name.startswith("__") or len(rest) > 1:
            raise refuse(f"asks for the attribute {describe(name)}")
        if isinstance(owner, type):
            self.names.check_class(owner)
            found = inspect.getattr_static(owner, name, None)
            found = found.__func__ if isinstance(found, staticmethod) else found
            if isinstance(found, type) and found in self.allow.classes or id(found) in self.allow.values:
                return found
            raise refuse(f"asks for {owner.__qualname__}.{name}")
        return self.method(inspect.getattr_static(type(owner), name, None), owner)

    def method(self, function: Any, instance: Any) -> Any:
        """A bound method: ``function`` must be what ``instance``'s class (on the list) has
        under that name, defined by river, a custom module, or random.Random (RANDOM_METHODS)."""
        function = function.function if isinstance(function, MethodName) else function
        cls = type(instance)
        self.names.check_class(cls)
        if not isinstance(function, types.FunctionType) or function.__name__.startswith("__"):
            raise refuse(f"binds {describe(function)} to {cls.__qualname__}")
        defined_by = function.__module__.split(".", 1)[0]
        if inspect.getattr_static(cls, function.__name__, None) is not function or not (
            defined_by == "river"
            or defined_by in self.names.allowed_modules
            or (isinstance(instance, random.Random) and function.__name__ in RANDOM_METHODS)
        ):
            raise refuse(f"binds {function.__qualname__} to {cls.__qualname__}")
        return types.MethodType(function, instance)

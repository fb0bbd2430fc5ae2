"""Calls an upload makes of classes (REDUCE, NEWOBJ, INST, OBJ) and the callables it keeps as
state, checked before anything runs: which classes may be called at all, on which arguments,
and what their construction is charged."""

from __future__ import annotations

import collections
import datetime
import fractions
import functools
import types
from typing import TYPE_CHECKING, Any

from .. import bounds
from .allowlist import PLAIN
from .arrays import array_bytes, array_shape
from .budget import OBJECT_COST, SLOT_COST
from .refusals import describe, out_of_bounds, refuse

if TYPE_CHECKING:
    from .loader import Loader


def _plain(value: Any) -> bool:
    """Whether calling a built-in constructor on ``value`` runs no code of the upload's objects:
    scalars, time zones (a datetime's), and the built-in containers (their elements are stored,
    never called)."""
    return type(value) in PLAIN or type(value) in (tuple, list, dict, set, frozenset, datetime.timezone)


class Calls:
    """The class calls of one load, each with its arguments checked and charged."""

    def __init__(self, loader: Loader) -> None:
        self.budget = loader.budget
        self.allow = loader.allow
        self.names = loader.names
        self.checks = loader.checks

    def call(self, function: Any, args: tuple) -> Any:
        """REDUCE, and INST / OBJ with arguments: a listed reconstructor, or a class call."""
        if not isinstance(args, tuple):
            raise refuse("calls something with arguments that are not a tuple")
        self.budget.charge(OBJECT_COST + SLOT_COST * len(args), "a call")
        if id(function) in self.checks.callable_ids:
            return function(*args)
        self.names.check_class(function)
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
        elif cls.__module__.split(".", 1)[0] in self.names.allowed_modules and self.names.allowed(cls):
            pass  # the operator's own classes, whose constructors the app trusts
        elif cls.__module__ in ("builtins", "collections", "datetime", "decimal", "fractions", "statistics",
                                "random", "operator", "functools", "numpy"):  # fmt: skip
            self.check_plain_call(cls, args)
        else:
            raise refuse(f"calls {cls.__qualname__}(...), which river's pickles never do")
        return cls(*args)

    def check_plain_call(self, cls: type, args: tuple) -> None:
        """A standard or numpy class called on plain values only (no object of the upload gets
        to run code), charged for what it allocates."""
        import numpy

        if issubclass(cls, numpy.generic) and any(type(arg) is int for arg in args):
            # numpy.void(400000000) allocates that many bytes; river's scalars come from scalar().
            raise refuse(f"sizes a numpy {cls.__name__} with a number")
        if cls is functools.partial or cls is collections.defaultdict:
            return  # their callables are checked by call() and load_build()
        if not all(_plain(arg) for arg in args):
            raise refuse(f"calls {cls.__qualname__} on {[type(arg).__name__ for arg in args]}")
        if issubclass(cls, bytes | bytearray) and args and type(args[0]) is int:
            self.budget.charge(args[0], f"{cls.__name__}({args[0]})")
        if cls is range:
            # Charged as the list it stands for: a model's code may loop over it.
            self.budget.charge(SLOT_COST * len(range(*args)), "a range")
        if cls is fractions.Fraction and not all(type(arg) is int for arg in args):
            raise refuse("builds a Fraction from text")  # Fraction("1e99999999") computes 10**99999999
        self.budget.charge(sum(len(arg) for arg in args if isinstance(arg, str | bytes | bytearray)), "a value")

    def check_numbers(self, cls: type, args: tuple) -> None:
        """Compiled and river-called classes take numbers (and VectorDict a dict and flags);
        a window size is charged as that many slots, it may be allocated at once."""
        for arg in args:
            if type(arg) is int:
                self.budget.charge(SLOT_COST * abs(arg), f"{cls.__qualname__}({arg})")
            elif callable(arg):
                self.check_callable_value(arg)  # VectorDict's default factory
            elif type(arg) not in (type(None), bool, float, dict, cls):
                raise refuse(f"calls {cls.__qualname__} with {type(arg).__name__}")

    def check_callable_value(self, value: Any) -> None:
        """A callable kept as state (a defaultdict's factory, a partial's function): a class on
        the list, a named function, or an instance of a listed class (a partial, a bound method,
        river's initializers) built through these checks; never one of the reconstructors."""
        if isinstance(value, type):
            self.names.check_class(value)
        elif id(value) in self.allow.values:
            return
        elif id(value) in self.checks.callable_ids or not (callable(value) and self.names.allowed(type(value))):
            raise refuse(f"keeps {describe(value)} as a function")

    def check_partial(self, function: Any, args: tuple, keywords: dict | None) -> None:
        import numpy

        self.check_callable_value(function)
        try:
            bounds.check_text_step(function, args, keywords, "a text preprocessing step")
        except bounds.OutOfBounds as error:
            raise out_of_bounds(error) from None
        if function is numpy.ones:
            # LDA keeps partial(numpy.ones, 1): the shape is allocated whenever it is called.
            # Only that form: a shape or dtype given any other way would escape the charge.
            if keywords or len(args) > 1:
                raise refuse("keeps a partial of numpy.ones with arguments other than a shape")
            if args:
                self.budget.charge(array_bytes(array_shape(args[0]), numpy.dtype(float)), "a partial's array")

    def new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        """NEWOBJ: ``cls.__new__(cls, *args)``, which runs no __init__; arguments only where
        __new__ takes them (tuple subclasses, compiled classes), checked like a call."""
        self.names.check_class(cls)
        self.budget.charge(OBJECT_COST + SLOT_COST * (len(args) + len(kwargs)), "an object")
        if args or kwargs:
            if kwargs and cls not in self.allow.compiled:
                raise refuse(f"passes keywords to {cls.__qualname__}.__new__")
            if cls in self.allow.compiled:
                self.check_numbers(cls, (*args, *kwargs.values()))
            elif cls is functools.partial or cls is collections.defaultdict:
                # Their pickles call the class; __new__ would take a function unchecked.
                raise refuse(f"builds a {cls.__qualname__} through __new__ with arguments")
            elif issubclass(cls, tuple):
                self.check_plain_call(tuple, (args,))
            elif cls.__new__ is not object.__new__:
                self.check_plain_call(cls, args)
        return cls.__new__(cls, *args, **kwargs)

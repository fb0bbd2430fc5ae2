"""The unpickler: Python's own, with every opcode that resolves, calls, builds or grows a
value checked (names by :mod:`.names`, calls by :mod:`.calls`, reconstructors by
:mod:`.checks`) and what it builds charged to the upload's budget."""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import inspect
import io
import pickle
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ..errors import UnsafePickle
from .arrays import check_random_state
from .budget import OBJECT_COST, SLOT_COST, Budget
from .calls import Calls
from .checks import Checks
from .names import Names
from .refusals import describe, refuse

_dispatch: dict[int, Callable[[Any], None]] = pickle._Unpickler.dispatch  # type: ignore[attr-defined]
#: What BUILD may never set state on: it would change the class, module or function for the
#: whole process.
_NOT_INSTANCES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class Loader(pickle._Unpickler):  # type: ignore[name-defined,misc]
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

    def __init__(self, data: bytes, allowed_modules: Iterable[str], budget: Budget) -> None:
        super().__init__(io.BytesIO(data))
        self.budget = budget
        self.names = Names(allowed_modules)
        self.allow = self.names.allow
        self.loading = False
        self.checks = Checks(self)
        self.calls = Calls(self)

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
        if (module, name) in self.checks.reconstructors:
            return self.checks.reconstructors[(module, name)]
        return self.names.find(module, name)

    # calls ------------------------------------------------------------------------------------------

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.calls.call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        if not isinstance(args, tuple):
            raise refuse("passes __new__ arguments that are not a tuple")
        self.stack[-1] = self.calls.new(self.stack[-1], args, {})

    def load_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        if not (isinstance(args, tuple) and isinstance(kwargs, dict) and all(type(key) is str for key in kwargs)):
            raise refuse("passes malformed arguments to __new__")
        self.stack[-1] = self.calls.new(self.stack[-1], args, kwargs)

    def _instantiate(self, klass: Any, args: list) -> None:
        # INST and OBJ (protocols 0 and 1): a call with arguments, __new__ without.
        self.append(self.calls.call(klass, tuple(args)) if args else self.calls.new(klass, (), {}))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    # state ------------------------------------------------------------------------------------------

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        cls = type(target)
        if isinstance(target, _NOT_INSTANCES):
            raise refuse(f"sets attributes of {describe(target)}")
        self.names.check_class(cls)
        import numpy

        if isinstance(target, numpy.ndarray):
            self.checks.set_array_state(target, state)
            return
        if isinstance(target, numpy.dtype):
            self.checks.set_dtype_state(target, state)
            return
        if isinstance(target, numpy.random.BitGenerator | numpy.random.RandomState | numpy.random.SeedSequence):
            check_random_state(state)
        if cls is functools.partial:
            if not (isinstance(state, tuple) and len(state) == 4 and isinstance(state[1], tuple)):
                raise refuse("gives a partial a malformed state")
            self.calls.check_partial(state[0], state[1], state[2] or {})
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
            # The instance's own __dict__, as pickle does; never a class's. Its names interned,
            # as pickle does too: a model loaded here pickles back to the same bytes.
            vars(target).update({sys.intern(key): value for key, value in attributes.items()})
        if slots:
            _no_dunders(slots)
            if cls.__setattr__ is not object.__setattr__:
                raise refuse(f"sets slots of {cls.__qualname__}, whose __setattr__ is its own")
            for key, value in slots.items():
                # A slot, or a plain attribute: never a property or other descriptor, whose
                # setter would run.
                found = inspect.getattr_static(cls, key, None)
                if found is not None and not isinstance(found, types.MemberDescriptorType):
                    raise refuse(f"sets {cls.__qualname__}.{key}, which is not a slot")
                object.__setattr__(target, key, value)

    dispatch[pickle.BUILD[0]] = load_build

    # containers -------------------------------------------------------------------------------------

    def _extend(self, target: Any, items: list) -> None:
        self.budget.charge(SLOT_COST * len(items), "list items")
        # The type's own method, never an attribute the instance holds.
        if isinstance(target, list):
            list.extend(target, items)
        elif isinstance(target, collections.deque) and type(target) in self.allow.classes:
            type(target).extend(target, items)
        else:
            raise refuse(f"appends items to {type(target).__name__}")

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
            raise refuse(f"sets items of {type(target).__name__}")
        self.budget.charge(SLOT_COST * len(items), "dict items")
        # The class's own __setitem__ (OrderedDict keeps its order there), never an instance's.
        setitem = type(target).__setitem__
        for index in range(0, len(items) - 1, 2):
            setitem(target, items[index], items[index + 1])

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise refuse(f"adds items to {type(target).__name__}")
        self.budget.charge(SLOT_COST * 2 * len(items), "set items")
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

    def load(self: Loader) -> None:
        count = len(self.stack) if slots is None else slots
        self.budget.charge(OBJECT_COST + SLOT_COST * 2 * count, "a container")
        original(self)

    Loader.dispatch[opcode[0]] = load


for _opcode, _slots in (
    (pickle.TUPLE, None), (pickle.LIST, None), (pickle.DICT, None), (pickle.FROZENSET, None),
    (pickle.TUPLE1, 1), (pickle.TUPLE2, 2), (pickle.TUPLE3, 3), (pickle.EMPTY_LIST, 0), (pickle.EMPTY_DICT, 0),
    (pickle.EMPTY_SET, 0), (pickle.EMPTY_TUPLE, 0),
):  # fmt: skip
    _charged(_opcode, _slots)


def _no_dunders(state: Any) -> None:
    """State must be a dict of plain attribute names: a dunder (``__reduce_ex__``, ``__class__``,
    ``__dict__``) would change how the server pickles or treats the object later."""
    if state is None:
        return
    if not isinstance(state, dict) or not all(type(key) is str and not key.startswith("__") for key in state):
        raise UnsafePickle(
            "The upload sets special (dunder) or malformed attributes of an object, which is not allowed."
        )

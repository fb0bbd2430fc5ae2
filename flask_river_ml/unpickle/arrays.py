"""numpy's reconstructors and the state of its arrays, dtypes and random generators, checked
before numpy allocates or copies anything: element counts with sub-array shapes, itemsizes,
offsets and strides inside their buffer, positions inside a generator's arrays."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from .allowlist import PLAIN, AllowList
from .budget import OBJECT_COST, Budget
from .refusals import describe, refuse

#: The most dimensions an uploaded array may have (numpy's own limit is 64).
MAX_DIMENSIONS = 32


def array_shape(value: Any) -> tuple[int, ...]:
    shape = value if isinstance(value, tuple | list) else (value,)
    if len(shape) > MAX_DIMENSIONS or not all(type(size) is int and size >= 0 for size in shape):
        raise refuse(f"asks for an array of shape {describe(value)}")
    return tuple(shape)


def _dtype(value: Any) -> Any:
    """A numpy dtype from a dtype, a short type string or a scalar type: numpy.dtype() on any
    other object would read its ``dtype`` attribute."""
    import numpy

    if isinstance(value, numpy.dtype):
        return value
    allowed = isinstance(value, str | bytes) and len(value) <= 64
    allowed = allowed or (isinstance(value, type) and (issubclass(value, numpy.generic) or value in PLAIN[1:5]))
    if not allowed:
        raise refuse(f"describes an array type with {describe(value)}")
    return numpy.dtype(value)


def array_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    # itemsize covers sub-array dtypes ("(8000,8000)f8" is 512 MB an element); an object
    # element is a pointer.
    return math.prod(shape) * max(dtype.itemsize, 1)


def _shape_steps(strides: Any, dimensions: int) -> tuple[int, ...]:
    steps = tuple(strides) if isinstance(strides, tuple | list) else ()
    if len(steps) != dimensions or not all(type(step) is int for step in steps):
        raise refuse(f"gives an array the strides {describe(strides)}")
    return steps


def _is_bit_generator(cls: type) -> bool:
    import numpy.random

    return issubclass(cls, numpy.random.BitGenerator) and cls is not numpy.random.BitGenerator


def check_random_state(state: Any) -> None:
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
                    raise refuse("gives a seed sequence a pool size that is not its pool's")
            if len(value) == 5 and value[0] == "MT19937" and not (type(value[2]) is int and 0 <= value[2] <= 624):
                raise refuse(f"gives a random generator the position {describe(value[2])}")
            pending.extend(value)
        elif isinstance(value, dict):
            for key, limit in (("pos", 624), ("buffer_pos", 4)):
                if key in value and not (type(value[key]) is int and 0 <= value[key] <= limit):
                    raise refuse(f"gives a random generator the {key} {describe(value[key])}")
            pending.extend(value.values())


class ArrayChecks:
    """The reconstructors of numpy's pickles, and BUILD's state of arrays and dtypes."""

    budget: Budget
    allow: AllowList
    #: The dtypes this upload made (copies), which alone may take state.
    own_dtypes: set[int]
    wrappers: dict[str, Callable[..., Any]]

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        import numpy
        from numpy._core.multiarray import _reconstruct

        if subtype is not numpy.ndarray:
            raise refuse(f"rebuilds an array as {describe(subtype)}")
        checked_shape, checked_dtype = array_shape(shape), _dtype(dtype)
        self.budget.charge(array_bytes(checked_shape, checked_dtype), "an array")
        return _reconstruct(numpy.ndarray, checked_shape, checked_dtype)

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> Any:
        from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]

        checked_shape, checked_dtype = array_shape(shape), _dtype(dtype)
        if type(buffer) not in (bytes, bytearray) or checked_dtype.hasobject or order not in ("C", "F"):
            raise refuse("builds an array from something other than its bytes")
        if len(buffer) != array_bytes(checked_shape, checked_dtype):
            raise refuse(f"builds an array of shape {checked_shape} from {len(buffer)} bytes")
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

        checked_shape, checked_dtype = array_shape(shape), _dtype(dtype)
        size = array_bytes(checked_shape, checked_dtype)
        if order not in (None, "C", "F"):
            raise refuse(f"asks for an array order {describe(order)}")
        if buffer is None:
            if offset != 0 or strides is not None:
                raise refuse("gives an array an offset or strides without a buffer")
            self.budget.charge(size, "an array")
            return numpy.ndarray(checked_shape, checked_dtype, order=order)
        if type(buffer) not in (bytes, bytearray) or checked_dtype.hasobject:
            raise refuse("builds an array over something other than plain bytes")
        if type(offset) is not int or offset < 0:
            raise refuse(f"gives an array the offset {describe(offset)}")
        if strides is None:
            low, high = offset, offset + size
        else:
            steps = _shape_steps(strides, len(checked_shape))
            extents = [(length - 1) * step for length, step in zip(checked_shape, steps, strict=True)]
            low = offset + sum(min(extent, 0) for extent in extents)
            high = offset + sum(max(extent, 0) for extent in extents) + checked_dtype.itemsize
        if math.prod(checked_shape) and (low < 0 or high > len(buffer)):
            raise refuse(f"reads bytes {low} to {high} of a buffer of {len(buffer)}")
        self.budget.charge(OBJECT_COST, "an array")
        return numpy.ndarray(checked_shape, checked_dtype, buffer, offset, strides, order)

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        import numpy
        from numpy._core.multiarray import scalar

        if not isinstance(dtype, numpy.dtype):
            raise refuse(f"builds a numpy scalar of {describe(dtype)}")
        if not dtype.hasobject and (type(data) is not bytes or len(data) != dtype.itemsize):
            raise refuse(f"builds a numpy scalar of {dtype} from {type(data).__name__}")
        self.budget.charge(dtype.itemsize, "a numpy scalar")
        return scalar(dtype, data)

    def dtype(self, value: Any, align: Any = False, copy: Any = False) -> Any:
        import numpy

        if type(align) is not bool or type(copy) is not bool:
            raise refuse("passes a dtype flags that are not booleans")
        made = numpy.dtype(_dtype(value), align, copy)
        if copy:
            # Only a copy may take state (BUILD): numpy's own dtypes are shared by the process.
            self.own_dtypes.add(id(made))
        return made

    def bit_generator(self, kind: Any = "MT19937") -> Any:
        import numpy.random

        kinds = {cls.__name__: cls for cls in self.allow.classes if _is_bit_generator(cls)}
        chosen = kinds.get(kind) if isinstance(kind, str) else kind if kind in kinds.values() else None
        if chosen is None:
            raise refuse(f"asks for the random bit generator {describe(kind)}")
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
            raise refuse(f"rebuilds {describe(cls)} as a seed sequence")
        # Looked up by name: written here, the double underscore would be mangled.
        unpickle = vars(sys.modules["numpy.random.bit_generator"])["__pyx_unpickle_SeedSequence"]
        return unpickle(cls, checksum, state)

    def create_array(self, factory: Any, args: Any, state: Any, npdict: Any = None) -> Any:
        # dill's numpy array helper, rebuilt: ``factory`` must be numpy's _reconstruct as this
        # list offers it, the state is checked like any array's, and no __dict__ is set.
        if factory is not self.wrappers["reconstruct"]:
            raise refuse(f"builds an array with {describe(factory)}")
        if npdict is not None:
            raise refuse("sets attributes of an array")
        array = self.reconstruct(*args)
        self.set_array_state(array, state)
        return array

    def set_array_state(self, array: Any, state: Any) -> None:
        """ndarray.__setstate__, once the data is known to match the shape and type."""
        import numpy

        if type(array) is not numpy.ndarray or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise refuse("gives an array a malformed state")
        shape, dtype, _fortran, data = state[-4:]
        checked_shape = array_shape(shape)
        if not isinstance(dtype, numpy.dtype):
            raise refuse("gives an array a type that is not a dtype")
        count = math.prod(checked_shape)
        if dtype.hasobject:
            matches = type(data) is list and len(data) == count
        else:
            matches = type(data) in (bytes, bytearray) and len(data) == count * dtype.itemsize
        if not matches:
            raise refuse(f"gives an array of shape {checked_shape} and type {dtype} other data")
        self.budget.charge(array_bytes(checked_shape, dtype), "an array")
        array.__setstate__(state)

    def set_dtype_state(self, dtype: Any, state: Any) -> None:
        """dtype.__setstate__ on a dtype this upload made, for a plain type only: no sub-array,
        fields or names (river's arrays have none), an itemsize within the budget."""
        if id(dtype) not in self.own_dtypes:
            raise refuse("sets the state of a dtype the process shares")
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[2:5] == (None, None, None)):
            raise refuse("gives a dtype a structured or malformed state")
        if type(state[5]) is not int or state[5] > self.budget.limit:
            raise refuse(f"gives a dtype the itemsize {describe(state[5])}")
        # Alignment and flags as numpy gives this type itself: numpy trusts them (a void dtype
        # flagged as holding a pickled list makes numpy's scalar read raw process memory).
        if tuple(state[6:8]) != tuple(dtype.__reduce__()[2][6:8]):
            raise refuse("gives a dtype an alignment or flags of another type")
        dtype.__setstate__(state)

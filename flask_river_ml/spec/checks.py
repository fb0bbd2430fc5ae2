"""The bounds of one build: the size of a description before anything is built, and the time
the construction took and the size of the built model's pickle after."""

from __future__ import annotations

import io
import pickle
from typing import Any

import dill

from ..errors import INTERPRETER_EXITS, InvalidSpec
from ..payloads import check_values

#: The most JSON values (objects, arrays, scalars) one description may hold.
MAX_VALUES = 1000
#: The most characters its strings may hold together.
MAX_CHARS = 65_536
#: The most seconds a construction may take; a slower one is refused once it has finished.
MAX_SECONDS = 5.0
#: The largest pickle a built model may have (RIVER_ML_UPLOAD_MAX_BYTES bounds it further).
MAX_MODEL_BYTES = 16 * 2**20


def check_size(description: Any) -> None:
    check_values(description, "The model description")
    values = chars = 0
    pending = [description]
    while pending:
        item = pending.pop()
        values += 1
        if isinstance(item, dict):
            chars += sum(len(key) if isinstance(key, str) else MAX_CHARS for key in item)
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, str):
            chars += len(item)
        if values > MAX_VALUES or chars > MAX_CHARS:
            raise InvalidSpec(
                f"The model description is too large: at most {MAX_VALUES} values and {MAX_CHARS} characters."
            )


class _Budget(io.RawIOBase):
    """A sink that counts what is pickled into it and stops the pickler past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.count(memoryview(data).nbytes)

    def count(self, size: int) -> int:
        self.size += size
        if self.size > self.limit:
            raise InvalidSpec(
                f"The model built from the description would take more than {self.limit} bytes; ask for a smaller one."
            )
        return size

    def buffer(self, buffer: pickle.PickleBuffer) -> bool:
        # numpy hands its arrays out of band: counted by size, never copied or even touched.
        self.count(buffer.raw().nbytes)
        return False


def check_built(model: Any, seconds: float, max_bytes: int) -> None:
    name = type(model).__name__
    if seconds > MAX_SECONDS:
        raise InvalidSpec(f"Building {name} took {seconds:.1f} s, more than {MAX_SECONDS} s; ask for a smaller model.")
    sink = _Budget(max_bytes)
    try:
        try:
            pickle.Pickler(sink, protocol=5, buffer_callback=sink.buffer).dump(model)
        except (pickle.PicklingError, TypeError, AttributeError):
            sink.size = 0
            dill.Pickler(sink, protocol=5, buffer_callback=sink.buffer).dump(model)
    except InvalidSpec:
        raise
    except INTERPRETER_EXITS:
        raise
    except BaseException as error:  # noqa: BLE001 - a model's pickling hooks may raise anything
        raise InvalidSpec(f"The {name} built from the description cannot be pickled: {error}") from None

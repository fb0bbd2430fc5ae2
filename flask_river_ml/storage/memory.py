"""The memory backend: dictionaries in this process, for tests and throw-away servers.

Nothing survives the process and nothing is shared with other processes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .base import Backend, Change, Guard, Outcome, Records
from .local import Loaded, commit_in


class MemoryBackend(Backend):
    """Every operation holds one re-entrant lock, which makes each of them atomic. Messages
    are handed to this process's listeners directly."""

    name = "memory"
    schemes = ("memory",)

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[bytes], None]]] = {}
        self._mutex = threading.RLock()
        self._data = _Data()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> bytes | None:
        with self._mutex:
            return self._data.value(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._mutex:
            self._data.put(key, value, ttl)

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return self.commit(Change(create=(key, value, ttl))).written

    def delete(self, *keys: str) -> int:
        with self._mutex:
            found = [key for key in keys if self._data.value(key) is not None or key in self._data.timings]
            for key in found:
                self._data.remove(key)
                self._data.timings.pop(key, None)
            return len(found)

    def keys(self, prefix: str) -> list[str]:
        with self._mutex:
            candidates = [key for key in self._data.values if key.startswith(prefix)]
            return sorted(key for key in candidates if self._data.value(key) is not None)

    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        with self._mutex:
            value = func(self._data.value(key))
            self._data.put(key, value, None)
            return value

    def observed(self, key: str) -> tuple[int, int, float] | None:
        with self._mutex:
            return self._data.timings.get(key)

    def commit(self, change: Change, guard: Guard | None = None) -> Outcome:
        with self._mutex:
            return commit_in(self._data, change, guard)

    def read(self, log: str, after: int = 0) -> Records:
        with self._mutex:
            return self._data.records(log, after)

    def trim(self, log: str, before: int) -> None:
        with self._mutex:
            records = self._data.logs.get(log, {})
            for seq in [seq for seq in records if seq < before]:
                del records[seq]

    def delete_log(self, log: str) -> None:
        with self._mutex:
            self._data.logs.pop(log, None)
            self._data.heads.pop(log, None)

    def publish(self, channel: str, message: bytes) -> None:
        for callback in list(self._listeners.get(channel, ())):
            callback(message)

    def listen(self, channel: str, callback: Callable[[bytes], None]) -> Callable[[], None]:
        with self._mutex:
            self._listeners.setdefault(channel, []).append(callback)

        def stop() -> None:
            with self._mutex:
                self._listeners[channel].remove(callback)

        return stop

    def has_listeners(self, channel: str) -> bool:
        return bool(self._listeners.get(channel))

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        with self._mutex:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise TimeoutError(f"Could not take the lock {name!r} within {timeout} s.")
        try:
            yield
        finally:
            lock.release()


class _Data:
    """The memory store's values, logs and timings (a :class:`~.local.View`); the store's
    lock is held around every use."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, float | None]] = {}
        self.logs: dict[str, dict[int, bytes]] = {}
        self.heads: dict[str, int] = {}
        self.timings: dict[str, tuple[int, int, float]] = {}

    def value(self, key: str) -> bytes | None:
        entry = self.values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= time.time():
            del self.values[key]
            return None
        return value

    def load(self, keys: Sequence[str], log: str | None, timings: Sequence[str]) -> Loaded:
        head = 0 if log is None else self.heads.get(log, 0)
        return [self.value(key) for key in keys], head, [self.timings.get(key) for key in timings]

    def records(self, log: str, after: int) -> Records:
        records = self.logs.get(log, {})
        # Numbers are consecutive from the first record kept: walk from there, not the log.
        seq = max(after + 1, next(iter(records), after + 1))
        found = []
        while seq in records:
            found.append((seq, records[seq]))
            seq += 1
        return found

    def put(self, key: str, value: bytes, ttl: float | None) -> None:
        self.values[key] = (bytes(value), None if ttl is None else time.time() + ttl)

    def remove(self, key: str) -> None:
        self.values.pop(key, None)

    def push(self, log: str, record: bytes) -> int:
        seq = self.heads.get(log, 0) + 1
        self.heads[log] = seq
        self.logs.setdefault(log, {})[seq] = bytes(record)
        return seq

    def put_timing(self, key: str, timing: tuple[int, int, float]) -> None:
        self.timings[key] = timing

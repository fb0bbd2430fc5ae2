"""The memory backend: dictionaries in this process, for tests and throw-away servers.

Nothing survives the process and nothing is shared with other processes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from .base import Backend, Guard, Records, Writes


class MemoryBackend(Backend):
    """Every operation holds one re-entrant lock, which makes each of them atomic. Messages
    are handed to this process's listeners directly."""

    name = "memory"

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[bytes], None]]] = {}
        self._mutex = threading.RLock()
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._logs: dict[str, dict[int, bytes]] = {}
        self._heads: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._timings: dict[str, tuple[int, int, float]] = {}

    def _live(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= time.time():
            del self._values[key]
            return None
        return value

    def get(self, key: str) -> bytes | None:
        with self._mutex:
            return self._live(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._mutex:
            self._values[key] = (bytes(value), None if ttl is None else time.time() + ttl)

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with self._mutex:
            if self._live(key) is not None:
                return False
            self.set(key, value, ttl)
            return True

    def pop(self, key: str) -> bytes | None:
        with self._mutex:
            value = self._live(key)
            self._values.pop(key, None)
            return value

    def delete(self, *keys: str) -> int:
        with self._mutex:
            found = [key for key in keys if self._live(key) is not None or key in self._timings]
            for key in found:
                self._values.pop(key, None)
                self._timings.pop(key, None)
            return len(found)

    def keys(self, prefix: str) -> list[str]:
        with self._mutex:
            candidates = [key for key in self._values if key.startswith(prefix)]
            return sorted(key for key in candidates if self._live(key) is not None)

    def incr(self, key: str, amount: int = 1) -> int:
        with self._mutex:
            value = int(self._live(key) or b"0") + amount
            self.set(key, str(value).encode())
            return value

    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        with self._mutex:
            value = func(self._live(key))
            self.set(key, value)
            return value

    def observed(self, key: str) -> tuple[int, int, float] | None:
        with self._mutex:
            return self._timings.get(key)

    def append(self, log: str, record: bytes) -> int:
        with self._mutex:
            seq = self._heads.get(log, 0) + 1
            self._heads[log] = seq
            self._logs.setdefault(log, {})[seq] = bytes(record)
            return seq

    def _check(self, guard: Guard) -> tuple[bool, Records]:
        return guard.check(self._live(guard.key), self._heads.get(guard.log, 0), self.read)

    def append_at(self, record: bytes, guard: Guard) -> tuple[int | None, Records]:
        with self._mutex:
            holds, unseen = self._check(guard)
            return (self.append(guard.log, record), []) if holds else (None, unseen)

    def write(self, writes: Writes, guard: Guard | None = None) -> tuple[bool, Records]:
        with self._mutex:
            if guard is not None:
                holds, unseen = self._check(guard)
                if not holds:
                    return False, unseen
            for key, value, ttl in writes.sets:
                self.set(key, value, ttl)
            for key, duration, alpha in writes.observes:
                count, total, mean = self._timings.get(key, (0, 0, float(duration)))
                mean = mean if count == 0 else alpha * duration + (1 - alpha) * mean
                self._timings[key] = (count + 1, total + duration, mean)
            return True, []

    def read(self, log: str, after: int = 0) -> list[tuple[int, bytes]]:
        with self._mutex:
            records = self._logs.get(log, {})
            # Numbers are consecutive from the first record kept: walk from there, not the log.
            seq = max(after + 1, next(iter(records), after + 1))
            found = []
            while seq in records:
                found.append((seq, records[seq]))
                seq += 1
            return found

    def trim(self, log: str, before: int) -> None:
        with self._mutex:
            records = self._logs.get(log, {})
            for seq in [seq for seq in records if seq < before]:
                del records[seq]

    def delete_log(self, log: str) -> None:
        with self._mutex:
            self._logs.pop(log, None)
            self._heads.pop(log, None)

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

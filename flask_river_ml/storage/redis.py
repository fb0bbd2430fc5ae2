"""The redis backend: one store for many processes and many hosts.

Every key lives under one prefix (``RIVER_ML_REDIS_PREFIX``), so the extension can share a
database. Values, logs, timings and locks each have a namespace of their own under it::

    <prefix>k:<key>    values (strings, with native expiry)
    <prefix>l:<log>    logs: a stream whose entry ids are the record numbers (``<seq>-0``)
    <prefix>h:<log>    the last record number given out for a log
    <prefix>t:<key>    timings: a hash of count, total and mean
    <prefix>x:<name>   locks (redis-py's Lock, which expires if its holder dies)

Appending to a log (plainly, or only at the head a writer saw) and recording a timing are Lua
scripts, atomic on the server, one round trip each. Redis 6.2 or newer is needed (GETDEL,
XTRIM MINID).

A server that is down, hangs, or refuses writes (a read-only replica, out of memory, a failed
background save) makes every call raise :class:`~flask_river_ml.errors.StoreUnavailable`
within about two seconds (:func:`client_options`); redis-py reconnects once it is back, and
the pub/sub listeners subscribe again by themselves.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import redis
from redis.exceptions import LockError, WatchError

from .redis_bus import RedisBus
from .redis_client import client_options
from .redis_scripts import RedisScripts

logger = logging.getLogger("flask_river_ml.storage")

#: Seconds after which a lock whose holder died is released by redis: short enough that a
#: crash blocks changes only briefly. A live holder renews it every third of that, however
#: long its change (the snapshot of a large model) takes.
_LOCK_EXPIRY = 15.0


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class RedisBackend(RedisBus, RedisScripts):
    """A backend on a redis server: values, logs and locks by commands, commits by script,
    messages by pub/sub."""

    name = "redis"
    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")

    @classmethod
    def from_url(cls, url: str, *, root: str, prefix: str) -> RedisBackend:
        """A backend on the server ``url`` names, as redis-py's ``from_url`` takes it; its
        keys under ``prefix``."""
        return cls(redis.Redis.from_url(url, **client_options()), prefix)

    def get(self, key: str) -> bytes | None:
        return self.client.get(self._k(key))

    def peek(self, key: str, log: str, after: int = 0) -> tuple[bytes | None, list[tuple[int, bytes]]]:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self._k(key))
            pipe.xrange(self._logs(log)[0], min=f"{after + 1}-0")
            value, entries = pipe.execute()
        return value, self._records(entries)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.client.set(self._k(key), value, **self._expiry(ttl))

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return bool(self.client.set(self._k(key), value, nx=True, **self._expiry(ttl)))

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self.client.delete(*(self._k(key) for key in keys), *(self._t(key) for key in keys)))

    def keys(self, prefix: str) -> list[str]:
        start = len(self._k(""))
        pattern = _glob_escape(self._k(prefix)) + "*"
        return sorted(key.decode()[start:] for key in self.client.scan_iter(match=pattern, count=1000))

    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        name = self._k(key)
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(name)
                    value = func(pipe.get(name))
                    pipe.multi()
                    pipe.set(name, value)
                    pipe.execute()
                    return value
                except WatchError:
                    continue  # another writer came in between: read again

    def observed(self, key: str) -> tuple[int, int, float] | None:
        count, total, mean = self.client.hmget(self._t(key), ["count", "total", "mean"])
        if count is None:
            return None
        return int(count), int(total), float(mean)

    def read(self, log: str, after: int = 0) -> list[tuple[int, bytes]]:
        return self._records(self.client.xrange(self._logs(log)[0], min=f"{after + 1}-0"))

    @staticmethod
    def _records(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[int, bytes]]:
        return [(int(entry_id.split(b"-")[0]), fields[b"r"]) for entry_id, fields in entries]

    def trim(self, log: str, before: int) -> None:
        self.client.xtrim(self._logs(log)[0], minid=f"{before}-0", approximate=False)

    def delete_log(self, log: str) -> None:
        self.client.delete(*self._logs(log))

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        # Not thread-local: its renewing thread uses the holder's token. Each call has its own.
        lock = self.client.lock(
            f"{self.prefix}x:{name}", timeout=_LOCK_EXPIRY, blocking_timeout=timeout, thread_local=False
        )
        if not lock.acquire():
            raise TimeoutError(f"Could not take the lock {name!r} within {timeout} s.")
        released = threading.Event()

        def renew() -> None:
            while not released.wait(_LOCK_EXPIRY / 3):
                with contextlib.suppress(LockError, redis.RedisError):
                    lock.reacquire()

        renewer = threading.Thread(target=renew, name=f"river-ml-lock-{name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            released.set()
            renewer.join()
            try:
                lock.release()
            except LockError:
                pass  # expired meanwhile: someone else may hold it now
            except redis.RedisError as error:
                unavailable = self.unavailable(error)
                if unavailable is None:
                    raise
                # What the lock guarded is done; the lock itself expires within _LOCK_EXPIRY.
                logger.warning("Could not release the lock %r: %s", name, unavailable.message)

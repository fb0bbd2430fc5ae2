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
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    LockError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
    WatchError,
)
from redis.retry import Retry

from ..errors import StoreUnavailable
from .base import EXISTS, TAKEN, Backend, Change, Guard, ListenerCheck, Outcome

logger = logging.getLogger("flask_river_ml.storage")

# The rules of storage.local.commit_in, in Lua. KEYS: with a guard, the log's stream, its
# head and the guarded key; then the key to take, the key to create (when there are), the
# keys to set, the timings' keys. ARGV: [1] '1' with a guard, [2] the head the writer saw
# ('' when not checked), [3] the value it saw, [4] '1' with a record, [5] the record, [6] '1'
# with a take, [7] the value to take, [8] '1' with a create, [9] its value, [10] its time to
# live in milliseconds (0: none), [11] the number of sets; then per set its value and time to
# live, per timing its duration and alpha. Replies: {1, number or 0} when written, {0,
# entries after the head} when the log moved on, {-1} when the guarded key changed, {-2}
# when the key to take was gone, {-3} when the key to create existed. The record is added
# before the head moves: a script that fails halfway keeps what it wrote, and a record
# number must never be given out without its record.
_COMMIT = """
local k = 0
if ARGV[1] == '1' then
    if redis.call('GET', KEYS[3]) ~= ARGV[3] then
        return {-1}
    end
    if ARGV[2] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then
        return {0, redis.call('XRANGE', KEYS[1], (tonumber(ARGV[2]) + 1) .. '-0', '+')}
    end
    k = 3
end
local take, create
if ARGV[6] == '1' then
    k = k + 1
    take = KEYS[k]
    if redis.call('GET', take) ~= ARGV[7] then
        return {-2}
    end
end
if ARGV[8] == '1' then
    k = k + 1
    create = KEYS[k]
    if redis.call('EXISTS', create) == 1 then
        return {-3}
    end
end
local seq = 0
if ARGV[4] == '1' then
    seq = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
    redis.call('XADD', KEYS[1], seq .. '-0', 'r', ARGV[5])
    redis.call('SET', KEYS[2], seq)
end
local function put(key, value, px)
    if tonumber(px) > 0 then
        redis.call('SET', key, value, 'PX', px)
    else
        redis.call('SET', key, value)
    end
end
local sets = tonumber(ARGV[11])
local a = 12
for i = k + 1, k + sets do
    put(KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
end
if create then
    put(create, ARGV[9], ARGV[10])
end
if take then
    redis.call('DEL', take)
end
for i = k + sets + 1, #KEYS do
    local count = redis.call('HINCRBY', KEYS[i], 'count', 1)
    redis.call('HINCRBY', KEYS[i], 'total', ARGV[a])
    local mean = tonumber(ARGV[a])
    if count > 1 then
        local alpha = tonumber(ARGV[a + 1])
        mean = alpha * mean + (1 - alpha) * tonumber(redis.call('HGET', KEYS[i], 'mean'))
    end
    redis.call('HSET', KEYS[i], 'mean', string.format('%.17g', mean))
    a = a + 2
end
return {1, seq}
"""
_CONFLICTS = {-2: TAKEN, -3: EXISTS}
#: Seconds after which a lock whose holder died is released by redis: short enough that a
#: crash blocks changes only briefly. A live holder renews it every third of that, however
#: long its change (the snapshot of a large model) takes.
_LOCK_EXPIRY = 15.0
#: Replies of a server that is there but cannot take a command now. redis-py gives some their
#: own class and leaves the code of the others at the start of the message (after the
#: command's place when it came from a pipeline): a failed background save (MISCONF), a
#: script that runs too long (BUSY), too few replicas to write to (NOREPLICAS).
_REFUSALS = (ReadOnlyError, OutOfMemoryError, NoPermissionError, TryAgainError, ClusterDownError)
_REFUSAL_CODE = re.compile(r"(?:^|caused error: )(?:MISCONF|BUSY|NOREPLICAS|MASTERDOWN|CLUSTERDOWN|TRYAGAIN)\b")
#: How long a pub/sub listener waits before it tries a lost server again.
_RESUBSCRIBE_SECONDS = 0.5


def client_options() -> dict[str, Any]:
    """How every redis client of the extension connects (the store's and the rate limit's).

    A request fails within about two seconds when the server is down or hangs, rather than
    wait for it: one second to connect, two for a reply. A connection idle for two seconds
    is checked (PING) before it is used, and a connection the server dropped (a restart, a
    failover) is opened again and the command sent once more, so the server recovers by
    itself. Only connection errors are retried, with a short backoff, never timeouts: a
    command that timed out may still run, and a learn must not be appended twice. Options in
    the query of ``RIVER_ML_REDIS_URL`` (``?socket_timeout=10``) win over these.
    """
    return {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 2.0,
        "health_check_interval": 2,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 2, supported_errors=(redis.ConnectionError,)),
    }


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class RedisBackend(Backend):
    """A backend on a redis server, through redis-py's connection pool (which survives forks)."""

    name = "redis"
    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")

    def __init__(self, client: redis.Redis | redis.RedisCluster, prefix: str = "river_ml:") -> None:
        # Any: redis-py types every reply as a union of bytes, str and awaitables.
        self.client: Any = client
        self.prefix = prefix
        self._commit = client.register_script(_COMMIT)
        self._listening = ListenerCheck(self._ask_listeners)

    @classmethod
    def from_url(cls, url: str, *, root: str, prefix: str) -> RedisBackend:
        """A backend on the server ``url`` names, as redis-py's ``from_url`` takes it; its
        keys under ``prefix``."""
        return cls(redis.Redis.from_url(url, **client_options()), prefix)

    @property
    def description(self) -> str:
        """The store as its failures name it: where it is, never the password of its URL."""
        where = self.client.connection_pool.connection_kwargs
        if "path" in where:
            return f"redis store at unix:{where['path']}"
        return f"redis store at {where.get('host', 'localhost')}:{where.get('port', 6379)}/{where.get('db', 0)}"

    def unavailable(self, error: Exception) -> StoreUnavailable | None:
        if isinstance(error, redis.ConnectionError | redis.TimeoutError):
            failure = "cannot be reached"
        elif isinstance(error, _REFUSALS) or (
            isinstance(error, redis.ResponseError) and _REFUSAL_CODE.search(str(error))
        ):
            failure = "refuses the request"
        else:
            return None
        # What the server said, without the command a pipeline's error quotes (its arguments).
        reason = (str(error).split("caused error: ")[-1].strip() or type(error).__name__).splitlines()[0][:200]
        return StoreUnavailable(f"The {self.description} {failure}: {reason}; try again shortly.")

    def _k(self, key: str) -> str:
        return f"{self.prefix}k:{key}"

    def _t(self, key: str) -> str:
        return f"{self.prefix}t:{key}"

    def _logs(self, log: str) -> list[str]:
        return [f"{self.prefix}l:{log}", f"{self.prefix}h:{log}"]

    @staticmethod
    def _expiry(ttl: float | None) -> dict[str, Any]:
        # Milliseconds, and at least one: a ttl of 0.2 s must not mean "never expires".
        return {} if ttl is None else {"px": max(1, int(ttl * 1000))}

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

    def commit(self, change: Change, guard: Guard | None = None) -> Outcome:
        keys: list[str] = []
        args: list[Any] = ["0", "", "", "0", "", "0", "", "0", "", 0, len(change.sets)]
        if guard is not None:
            keys += [*self._logs(guard.log), self._k(guard.key)]
            args[0:3] = ["1", "" if guard.head is None else guard.head, guard.value]
        if change.record is not None:
            if guard is None:
                raise ValueError("A record is appended to the log of a guard; none was given.")
            args[3:5] = ["1", change.record]
        if change.take is not None:
            keys.append(self._k(change.take[0]))
            args[5:7] = ["1", change.take[1]]
        if change.create is not None:
            keys.append(self._k(change.create[0]))
            args[7:10] = ["1", change.create[1], self._px(change.create[2])]
        for key, value, ttl in change.sets:
            keys.append(self._k(key))
            args += [value, self._px(ttl)]
        for key, duration, alpha in change.observes:
            keys.append(self._t(key))
            args += [duration, repr(alpha)]
        reply = self._commit(keys=keys, args=args)
        if reply[0] == 1:
            return Outcome(True, int(reply[1]) or None)
        if reply[0] == 0:
            # A script's entries are [id, [field, value]].
            return Outcome(False, unseen=[(int(entry_id.split(b"-")[0]), fields[1]) for entry_id, fields in reply[1]])
        return Outcome(False, conflict=_CONFLICTS.get(reply[0]))

    @classmethod
    def _px(cls, ttl: float | None) -> int:
        return cls._expiry(ttl).get("px", 0)

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
                if self.unavailable(error) is None:
                    raise
                # What the lock guarded is done; the lock itself expires within _LOCK_EXPIRY.
                logger.warning("Could not release the lock %r on the %s: %s", name, self.description, error)

    def _channel(self, channel: str) -> str:
        return f"{self.prefix}c:{channel}"

    def publish(self, channel: str, message: bytes) -> None:
        self.client.publish(self._channel(channel), message)

    def listen(self, channel: str, callback: Callable[[bytes], None]) -> Callable[[], None]:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{self._channel(channel): lambda message: callback(message["data"])})
        thread = pubsub.run_in_thread(sleep_time=1.0, daemon=True, exception_handler=self._keep_listening)

        def stop() -> None:
            thread.stop()
            # The listener itself may stop listening (its last stream overflowed): no join then.
            if threading.current_thread() is not thread:
                thread.join(timeout=5)
            pubsub.close()

        return stop

    def _keep_listening(self, error: BaseException, pubsub: Any, thread: Any) -> None:
        """What a listener thread does when a read fails: it lives on. Its next read connects
        again, and redis-py subscribes the new connection to the channel once the server is
        back; what was published meanwhile is lost, as pub/sub loses it for anyone away."""
        if not isinstance(error, Exception):
            raise error  # the interpreter's own (SystemExit...): not the listener's to keep
        if self._fault(error) is None:
            logger.exception("The listener of %s failed; it listens on.", self.description)
        time.sleep(_RESUBSCRIBE_SECONDS)

    def has_listeners(self, channel: str) -> bool:
        return self._listening(channel)

    def ping(self) -> None:
        self.client.ping()

    def _ask_listeners(self, channel: str) -> bool:
        ((_, count),) = self.client.pubsub_numsub(self._channel(channel))
        return int(count) > 0

    def close(self) -> None:
        self.client.close()

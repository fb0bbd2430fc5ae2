"""A redis client under the redis backend: how it connects, what its keys are named, and
which of its errors mean that the store cannot be used (see :mod:`flask_river_ml.storage.redis`
for the layout of the keys and what an outage does).
"""

from __future__ import annotations

import re
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, NoPermissionError, OutOfMemoryError, ReadOnlyError, TryAgainError
from redis.retry import Retry

from ..errors import StoreUnavailable
from .base import Backend

#: Replies of a server that is there but cannot take a command now. redis-py gives some their
#: own class and leaves the code of the others at the start of the message (after the
#: command's place when it came from a pipeline): a failed background save (MISCONF), a
#: script that runs too long (BUSY), too few replicas to write to (NOREPLICAS).
_REFUSALS = (ReadOnlyError, OutOfMemoryError, NoPermissionError, TryAgainError, ClusterDownError)
_REFUSAL_CODE = re.compile(r"(?:^|caused error: )(?:MISCONF|BUSY|NOREPLICAS|MASTERDOWN|CLUSTERDOWN|TRYAGAIN)\b")


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


class RedisClient(Backend):
    """A backend on a redis client (redis-py's connection pool survives forks), its keys under
    ``prefix``."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, prefix: str = "river_ml:") -> None:
        # Any: redis-py types every reply as a union of bytes, str and awaitables.
        self.client: Any = client
        self.prefix = prefix

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

    def _channel(self, channel: str) -> str:
        return f"{self.prefix}c:{channel}"

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()

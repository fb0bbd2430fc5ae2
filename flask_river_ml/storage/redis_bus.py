"""The message bus of the redis backend: redis pub/sub, with listener threads that live on
through outages and listeners counted on the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .base import ListenerCheck
from .redis_client import RedisClient

logger = logging.getLogger("flask_river_ml.storage")

#: How long a pub/sub listener waits before it tries a lost server again.
_RESUBSCRIBE_SECONDS = 0.5


class RedisBus(RedisClient):
    """Messages through redis pub/sub, to every process and host on the server."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, prefix: str = "river_ml:") -> None:
        super().__init__(client, prefix)
        self._listening = ListenerCheck(self._ask_listeners)

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

    def _ask_listeners(self, channel: str) -> bool:
        ((_, count),) = self.client.pubsub_numsub(self._channel(channel))
        return int(count) > 0

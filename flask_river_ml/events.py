"""Events and metric updates, fanned out to the streams of every process.

The service publishes each predict, learn and label (and the metrics after each learn and
label) through the backend: a table of the SQLite file for shelve, redis pub/sub for redis,
so a stream opened on one worker sees what every worker handled (the memory store keeps them
within its process). In
each process one listener per channel feeds bounded queues, one per open stream: a stream
whose client reads too slowly overflows its queue and is closed rather than let the server
buffer without bound.

Events are announcements, not records: when the store cannot carry one (it is down), the
event is dropped and the request that caused it still succeeds, as a pub/sub message is lost
for a listener that is away. Opening a stream needs the store, so :meth:`Events.check` raises
:class:`~flask_river_ml.errors.StoreUnavailable` before a stream starts.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import layout
from .encoding import jsonable
from .errors import StoreUnavailable
from .storage import Backend

logger = logging.getLogger("flask_river_ml.events")

EVENTS, METRICS = layout.EVENTS, layout.METRICS
#: Messages a stream may have waiting before it is dropped as too slow.
QUEUE_SIZE = 1000


class Subscription:
    """One stream's queue of messages."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.queue: queue.Queue[bytes] = queue.Queue(QUEUE_SIZE)
        self.closed = False

    def get(self, timeout: float) -> bytes | None:
        """The next message, or None when none came within ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.hub.unsubscribe(self)


class Hub:
    """The subscriptions of this process to one channel."""

    def __init__(self, backend: Backend, channel: str) -> None:
        self.backend = backend
        self.channel = channel
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        with self._lock:
            self._subscriptions.add(subscription)
            if self._stop is None:
                # One listener per channel and process, started with the first stream.
                self._stop = self.backend.listen(self.channel, self._deliver)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscription.closed = True
            self._subscriptions.discard(subscription)
            stop = self._stop if not self._subscriptions else None
            if stop is not None:
                self._stop = None
        if stop is not None:
            stop()

    def __len__(self) -> int:
        return len(self._subscriptions)

    def _deliver(self, message: bytes) -> None:
        for subscription in list(self._subscriptions):
            try:
                subscription.queue.put_nowait(message)
            except queue.Full:
                subscription.close()

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()


class Events:
    """Publishing side: what the service calls after each operation."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.events = Hub(backend, EVENTS)
        self.metrics = Hub(backend, METRICS)

    def wanted(self) -> bool:
        """Whether anyone listens to either channel (the payloads are built only then); nobody
        can while the store is unavailable."""
        try:
            return self.backend.has_listeners(EVENTS) or self.backend.has_listeners(METRICS)
        except StoreUnavailable:
            return False

    def publish(self, event: str, data: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        """One event, and the model's metrics after it when they changed; dropped (and logged)
        when the store cannot carry them."""
        message = {"event": event, "data": data}
        try:
            self.backend.publish(EVENTS, json.dumps(jsonable(message)).encode())
            if metrics is not None:
                self.backend.publish(METRICS, json.dumps(jsonable({**metrics, "model": data["model"]})).encode())
        except StoreUnavailable as error:
            logger.info("A %s event was not published: %s", event, error.message)

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` when the store cannot carry events now: a stream
        asks before it starts, since it cannot answer an error once its body is under way."""
        self.backend.ping()

    def close(self) -> None:
        self.events.close()
        self.metrics.close()


def sse(message: bytes, channel: str) -> str:
    """The server-sent-events frame of a message of ``channel``."""
    if channel == EVENTS:
        parsed = json.loads(message)
        return f"event: {parsed['event']}\ndata: {json.dumps(parsed['data'])}\n\n"
    return f"data: {message.decode()}\n\n"

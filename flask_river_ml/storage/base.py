"""The storage backend interface.

A backend stores bytes under string keys and keeps append-only logs; it knows nothing of
models, pickles or signatures (the engine and :mod:`flask_river_ml.serialization` sit above
it). Every method is atomic on its own, across threads and, for the shared backends, across
processes. The same conformance suite (``tests/test_storage.py``) runs against each backend.

A store that cannot be reached or written (a redis server down, a read-only SQLite file)
raises :class:`~flask_river_ml.errors.StoreUnavailable`, never its driver's exception: each
backend says once, in :meth:`Backend.unavailable`, which driver errors mean that, and every
method of the interface it defines is wrapped to apply it (:meth:`Backend.__init_subclass__`).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from ..errors import StoreUnavailable

logger = logging.getLogger("flask_river_ml.storage")

#: The methods of the interface that talk to the store (``lock`` is wrapped on its own).
_STORE_CALLS = frozenset(
    {
        "get", "set", "add", "pop", "delete", "keys", "incr", "update", "observe", "observed", "append",
        "append_at", "write", "read", "peek", "trim", "delete_log", "publish", "listen", "has_listeners", "ping",
    }
)  # fmt: skip
#: A store failure is logged at most once in this many seconds per backend: an outage under
#: load would otherwise write a line per request.
_REPORT_EVERY = 10.0
_Method = TypeVar("_Method", bound=Callable[..., Any])

#: Log records with their numbers, in order.
Records = list[tuple[int, bytes]]


@dataclass(frozen=True)
class Guard:
    """What a writer decided on: ``log`` ended at record ``head`` and ``key`` held ``value``.

    A guarded write (:meth:`Backend.append_at`, :meth:`Backend.write`) happens only if both
    still hold when it is made: the writer's answer (a prediction) is then exactly the one
    the model gives at that point of its log. With ``head`` None only ``key`` is checked.
    """

    log: str
    head: int | None
    key: str
    value: bytes

    def check(self, value: bytes | None, head: int, read: Callable[[str, int], Records]) -> tuple[bool, Records]:
        """Whether the guard holds on a store where its key holds ``value`` and its log ends
        at ``head``, as :meth:`Backend.write` answers: when the log moved on, the records the
        writer had not seen, through ``read``."""
        if value != self.value:
            return False, []
        if self.head is not None and head != self.head:
            return False, read(self.log, self.head)
        return True, []


@dataclass
class Writes:
    """Values to set, as ``(key, value, ttl)``, and timings to observe, as ``(key, value,
    alpha)``, made together by :meth:`Backend.write`."""

    sets: list[tuple[str, bytes, float | None]] = field(default_factory=list)
    observes: list[tuple[str, int, float]] = field(default_factory=list)


class Backend(abc.ABC):
    """A key-value store with logs, counters and locks.

    Keys are strings; values are bytes. ``ttl`` is in seconds; an expired key reads as absent.
    Logs are sequences of records numbered from 1 by :meth:`append`; numbers are never reused
    for the lifetime of the log, even after :meth:`trim`.
    """

    #: The name used in ``RIVER_ML_STORAGE_BACKEND`` and reported by ``service_info``.
    name: str = ""
    #: When the last failure of the store was logged (see :data:`_REPORT_EVERY`).
    _reported: float = float("-inf")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the store calls a backend defines so that the driver errors that
        :meth:`unavailable` recognises leave them as :class:`StoreUnavailable`: one place per
        backend, however many methods it has, and a third-party backend gets it for free."""
        super().__init_subclass__(**kwargs)
        for name in _STORE_CALLS & cls.__dict__.keys():
            setattr(cls, name, _guarded(cls.__dict__[name]))
        if "lock" in cls.__dict__:
            cls.lock = _guarded_lock(cls.__dict__["lock"])  # type: ignore[method-assign]

    def unavailable(self, error: Exception) -> StoreUnavailable | None:
        """The :class:`StoreUnavailable` that ``error``, raised by a call of this backend,
        stands for when it means that the store cannot be reached or written, or None for any
        other error (a bug, a caller's mistake), which then propagates unchanged.

        Its message names the store and says what failed, never a password; a backend may
        also drop here what the failure broke (a connection), so that the next call starts
        afresh. The memory store never fails.
        """
        return None

    def _fault(self, error: Exception) -> StoreUnavailable | None:
        """:meth:`unavailable` for ``error``, logged (at most every :data:`_REPORT_EVERY` s)."""
        if isinstance(error, StoreUnavailable):
            return None  # already translated by an inner call: let it through
        unavailable = self.unavailable(error)
        if unavailable is not None and time.monotonic() - self._reported > _REPORT_EVERY:
            self._reported = time.monotonic()
            logger.warning("%s (%s: %s)", unavailable.message, type(error).__name__, error)
        return unavailable

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when it is absent or expired."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value, expiring after ``ttl`` seconds."""

    @abc.abstractmethod
    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; True when it was stored."""

    @abc.abstractmethod
    def pop(self, key: str) -> bytes | None:
        """Remove ``key`` and return its value; of two concurrent pops only one gets it."""

    @abc.abstractmethod
    def delete(self, *keys: str) -> int:
        """Remove the keys; the number that existed."""

    @abc.abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Every live key that starts with ``prefix``, sorted."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer counter under ``key`` (absent is 0); the new value."""

    @abc.abstractmethod
    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        """Replace the value under ``key`` by ``func(old value)`` atomically; the new value.

        ``func`` may be called more than once (optimistic backends retry on conflict), so it
        must have no side effects.
        """

    def observe(self, key: str, value: int, alpha: float) -> None:
        """Add ``value`` to the running count, total and exponentially weighted mean at ``key``.

        The weighted mean starts at the first value, then moves by ``alpha`` towards each new
        one. Timings live beside the keys (``keys`` does not list them; ``delete`` removes
        them); they are written by :meth:`write` because every learn and predict records one,
        and a single atomic step is far cheaper than a read-modify-write.
        """
        self.write(Writes(observes=[(key, value, alpha)]))

    @abc.abstractmethod
    def observed(self, key: str) -> tuple[int, int, float] | None:
        """``(count, total, weighted mean)`` at ``key``, or None when nothing was observed."""

    @abc.abstractmethod
    def append(self, log: str, record: bytes) -> int:
        """Append ``record`` to ``log``; its sequence number (1, 2, ...)."""

    @abc.abstractmethod
    def append_at(self, record: bytes, guard: Guard) -> tuple[int | None, Records]:
        """Append ``record`` to ``guard.log`` only if ``guard`` still holds, atomically: a
        compare-and-append.

        ``(number, [])`` when the record was written. Otherwise nothing is written and the
        answer is ``(None, records after guard.head)``, the records the writer had not seen
        (those still kept), or ``(None, [])`` when ``guard.key`` changed.
        """

    @abc.abstractmethod
    def write(self, writes: Writes, guard: Guard | None = None) -> tuple[bool, Records]:
        """Make ``writes`` in one atomic step (a transaction, a script), if ``guard`` holds.

        ``(True, [])`` when they were made; otherwise, as :meth:`append_at` answers,
        ``(False, records the writer had not seen)`` or ``(False, [])``.
        """

    @abc.abstractmethod
    def read(self, log: str, after: int = 0) -> list[tuple[int, bytes]]:
        """The records of ``log`` numbered above ``after``, in order, with their numbers."""

    def peek(self, key: str, log: str, after: int = 0) -> tuple[bytes | None, list[tuple[int, bytes]]]:
        """``get(key)`` and ``read(log, after)`` together: what every request asks first, in
        one round trip where the store is remote. Not atomic together."""
        return self.get(key), self.read(log, after)

    @abc.abstractmethod
    def trim(self, log: str, before: int) -> None:
        """Drop the records of ``log`` numbered below ``before``."""

    @abc.abstractmethod
    def delete_log(self, log: str) -> None:
        """Drop ``log`` whole; a log appended to afterwards starts again at 1."""

    @abc.abstractmethod
    def lock(self, name: str, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
        """A mutual-exclusion lock shared by everyone using this store.

        Raises :class:`TimeoutError` when it cannot be taken within ``timeout`` seconds.
        """

    @abc.abstractmethod
    def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every listener of ``channel``, in every process sharing the store."""

    @abc.abstractmethod
    def listen(self, channel: str, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Call ``callback`` with each message published on ``channel`` from now on; returns
        the function that stops listening. Callbacks run on a thread of the backend's."""

    @abc.abstractmethod
    def has_listeners(self, channel: str) -> bool:
        """Whether anyone may be listening (a publisher skips building messages nobody reads)."""

    def ping(self) -> None:  # noqa: B027 - optional: a memory store is always there
        """Raise :class:`StoreUnavailable` if the store cannot be reached now (a stream asks
        before it starts, since it cannot answer an error once its body is under way)."""

    def close(self) -> None:  # noqa: B027 - optional: a memory store has nothing to release
        """Release connections and files; the backend must not be used afterwards."""


def _reraise(backend: Backend, error: Exception) -> NoReturn:
    """Raise the :class:`StoreUnavailable` that ``error`` stands for, or ``error`` itself."""
    unavailable = backend._fault(error)
    if unavailable is None:
        raise error
    raise unavailable from error


def _guarded(method: _Method) -> _Method:
    """``method`` raising :class:`StoreUnavailable` where its backend's store failed."""

    @functools.wraps(method)
    def guarded(self: Backend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised, as StoreUnavailable when it is the store's
            _reraise(self, error)

    return guarded  # type: ignore[return-value]


def _guarded_lock(method: _Method) -> _Method:
    """``lock`` whose taking and release raise :class:`StoreUnavailable` where the store failed."""

    @functools.wraps(method)
    def guarded(self: Backend, *args: Any, **kwargs: Any) -> _GuardedLock:
        return _GuardedLock(self, method(self, *args, **kwargs))

    return guarded  # type: ignore[return-value]


class _GuardedLock:
    """A backend's lock whose own failures are translated; errors of the block it guards pass
    through unchanged, whatever they are."""

    def __init__(self, backend: Backend, lock: contextlib.AbstractContextManager[None]) -> None:
        self._backend = backend
        self._lock = lock

    def __enter__(self) -> None:
        try:
            self._lock.__enter__()
        except Exception as error:  # noqa: BLE001 - re-raised, as StoreUnavailable when it is the store's
            _reraise(self._backend, error)

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        try:
            return self._lock.__exit__(kind, value, traceback)
        except Exception as error:
            if error is value:
                raise
            _reraise(self._backend, error)



class ListenerCheck:
    """``has_listeners`` for stores shared by many processes: the store is asked at most every
    ``fresh`` seconds per channel, so a stream opened elsewhere gets events that soon and a
    server nobody watches does not pay a query per request."""

    def __init__(self, ask: Callable[[str], bool], fresh: float = 0.25) -> None:
        self._ask = ask
        self._fresh = fresh
        self._answers: dict[str, tuple[float, bool]] = {}

    def __call__(self, channel: str) -> bool:
        checked, present = self._answers.get(channel, (0.0, False))
        if time.monotonic() - checked > self._fresh:
            present = self._ask(channel)
            self._answers[channel] = (time.monotonic(), present)
        return present

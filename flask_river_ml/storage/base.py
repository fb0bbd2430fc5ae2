"""The storage interfaces, split by capability as the ``limits`` library splits its storages.

A backend stores bytes under string keys (:class:`Store`, the core) and has the capabilities
the engine needs: logs written in guarded commits (:class:`GuardedLog`), timings
(:class:`Timings`), locks (:class:`Locks`) and a message bus (:class:`Bus`). It knows nothing
of models, pickles, signatures or what its keys mean (the engine, :mod:`flask_river_ml.layout`
and :mod:`flask_river_ml.serialization` sit above it). Every method is atomic on its own,
across threads and, for the shared backends, across processes. The same conformance suite
(``tests/test_storage.py``) runs against each backend.

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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, NoReturn, TypeVar

from ..errors import StoreUnavailable

logger = logging.getLogger("flask_river_ml.storage")

#: The methods of the interfaces that talk to the store (``lock`` is wrapped on its own).
_STORE_CALLS = frozenset(
    {
        "get", "set", "add", "delete", "keys", "update", "commit", "read", "peek", "trim", "delete_log",
        "observe", "observed", "publish", "listen", "has_listeners", "ping",
    }
)  # fmt: skip
#: A store failure is logged at most once in this many seconds per backend: an outage under
#: load would otherwise write a line per request.
_REPORT_EVERY = 10.0
#: A URL's password (``redis://user:password@host``, ``?password=...``) after what comes before
#: it: a failure's message must carry none to a log or a client.
_PASSWORDS = (re.compile(r"(://[^/:@\s]*:)[^/@\s]+(?=@)"), re.compile(r"(password=)[^&\s]+", re.IGNORECASE))
_Method = TypeVar("_Method", bound=Callable[..., Any])

#: Log records with their numbers, in order.
Records = list[tuple[int, bytes]]
#: A value to set: ``(key, value, ttl)``.
Put = tuple[str, bytes, float | None]


class Timing(NamedTuple):
    """Calls to time under ``key``: ``calls`` of them, each lasting ``duration`` (see
    :meth:`Timings.observe`). A batch times its samples as calls of one share of its
    duration each, in one or two of these, so a commit of any size moves a timing once."""

    key: str
    duration: int
    alpha: float
    calls: int = 1


#: A timing's ``(count, total)`` as a commit that observed calls in it left it.
Tally = tuple[int, int]
#: Calls an earlier commit timed, taken back: their timing and the tally that commit left.
Retraction = tuple[Timing, Tally]


@dataclass(slots=True)
class Guard:
    """What a writer decided on: ``log`` ended at record ``head`` and ``key`` held ``value``.

    A guarded commit happens only if both still hold when it is made: the writer's answer (a
    prediction) is then exactly the one the model gives at that point of its log. With
    ``head`` None only ``key`` is checked.

    ``after`` is the last record the writer has seen, if it says: a commit that appends a
    record answers with the records after that one that came before its own
    (:attr:`Outcome.unseen`), read in the same atomic step, so the writer can apply them and
    then its own record without asking the store again.
    """

    log: str
    head: int | None
    key: str
    value: bytes
    after: int | None = None


@dataclass(slots=True)
class Change:
    """What one request writes: all of it, in one atomic step, or none of it.

    ``record`` is appended to the guard's log. ``create`` is set only where its key is absent
    (a prediction waiting for its label under a client's identifier); ``take`` is removed
    only where its key still holds its value (the waiting prediction a label learns from), so
    of two labels of one prediction exactly one is written. ``creates`` and ``takes`` are more
    of each, for a request of many samples (a batch): one of them that cannot be made refuses
    the whole change, as ``create`` and ``take`` do. ``observes`` times calls; ``retracts``
    takes back calls timed by earlier commits (a learn whose record the model then failed
    on), in order, as :func:`~flask_river_ml.storage.local.retracted` says.
    """

    record: bytes | None = None
    sets: tuple[Put, ...] = ()
    create: Put | None = None
    take: tuple[str, bytes] | None = None
    observes: tuple[Timing, ...] = ()
    creates: tuple[Put, ...] = ()
    takes: tuple[tuple[str, bytes], ...] = ()
    retracts: tuple[Retraction, ...] = ()


#: Why a change whose guard held was not written: its ``take`` was gone, its ``create`` taken.
TAKEN, EXISTS = "taken", "exists"


@dataclass(slots=True)
class Outcome:
    """What a commit did: ``written``, with the appended record's number, the records before
    it that the writer had not seen (those after the guard's ``after``, when it gave one) and
    the tally each of its ``observes`` left, in order; otherwise the records the writer had
    not seen (the log moved on past the guard's ``head``), none (the guarded key changed), or
    the ``conflict`` of its ``take`` or ``create``."""

    written: bool
    seq: int | None = None
    unseen: Records = field(default_factory=list)
    conflict: str | None = None
    tallies: tuple[Tally, ...] = ()


class Store(abc.ABC):
    """Bytes by string key, with expiry: the core every backend has.

    ``ttl`` is in seconds; an expired key reads as absent. Each method is atomic on its own,
    across threads and, for the shared stores, across processes.
    """

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
    def delete(self, *keys: str) -> int:
        """Remove the keys, and the timings under them; the number that existed."""

    @abc.abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Every live key that starts with ``prefix``, sorted."""

    @abc.abstractmethod
    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        """Replace the value under ``key`` by ``func(old value)`` atomically; the new value.

        ``func`` may be called more than once (optimistic backends retry on conflict), so it
        must have no side effects.
        """

    def ping(self) -> None:  # noqa: B027 - optional: a memory store is always there
        """Raise :class:`StoreUnavailable` if the store cannot be reached now (a stream asks
        before it starts, since it cannot answer an error once its body is under way)."""

    def close(self) -> None:  # noqa: B027 - optional: a memory store has nothing to release
        """Release connections and files; the store must not be used afterwards."""


class GuardedLog(abc.ABC):
    """Append-only logs, written together with values in guarded commits.

    Records are numbered from 1; numbers are never reused for the lifetime of a log, even
    after :meth:`trim`.
    """

    @abc.abstractmethod
    def commit(self, change: Change, guard: Guard | None = None) -> Outcome:
        """Make ``change`` in one atomic step if ``guard`` holds (a transaction, a script).

        In-process stores share this rule in :func:`flask_river_ml.storage.local.commit_in`.
        """

    @abc.abstractmethod
    def read(self, log: str, after: int = 0) -> Records:
        """The records of ``log`` numbered above ``after``, in order, with their numbers."""

    def peek(self, key: str, log: str, after: int = 0) -> tuple[bytes | None, Records]:
        """``get(key)`` and ``read(log, after)`` together: what every request asks first, in
        one round trip where the store is remote. Not atomic together."""
        return self.get(key), self.read(log, after)  # type: ignore[attr-defined]

    @abc.abstractmethod
    def trim(self, log: str, before: int) -> None:
        """Drop the records of ``log`` numbered below ``before``."""

    @abc.abstractmethod
    def delete_log(self, log: str) -> None:
        """Drop ``log`` whole; a log appended to afterwards starts again at 1."""


class Timings(abc.ABC):
    """Running count, total and exponentially weighted mean of durations, by key.

    The weighted mean starts at the first value, then moves by ``alpha`` towards each new one
    (:func:`flask_river_ml.storage.local.moved`). Timings live beside the keys (``keys`` does
    not list them; ``delete`` removes them); a commit's ``observes`` writes them, because every
    learn and predict records one in the same atomic step as its write: one step is far
    cheaper than two.
    """

    def observe(self, key: str, value: int, alpha: float) -> None:
        """Add ``value`` to the timing at ``key``."""
        self.commit(Change(observes=(Timing(key, value, alpha),)))  # type: ignore[attr-defined]

    @abc.abstractmethod
    def observed(self, key: str) -> tuple[int, int, float] | None:
        """``(count, total, weighted mean)`` at ``key``, or None when nothing was observed."""


class Locks(abc.ABC):
    """Mutual exclusion shared by everyone using the store."""

    @abc.abstractmethod
    def lock(self, name: str, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
        """A lock shared by everyone using this store; :class:`TimeoutError` when it cannot be
        taken within ``timeout`` seconds."""


class Bus(abc.ABC):
    """Messages to every process sharing the store."""

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


class Backend(Store, GuardedLog, Timings, Locks, Bus):
    """A store with every capability the engine uses: what a backend implements.

    A store that cannot be reached or written raises :class:`StoreUnavailable`, never its
    driver's exception: the backend says once, in :meth:`unavailable`, which driver errors
    mean that, and every method of the interfaces it defines is wrapped to apply it.
    """

    #: The name reported by ``service_info`` (and, for the built-in backends, the value of
    #: ``RIVER_ML_STORAGE_BACKEND`` that chooses them).
    name: str = ""
    #: The URL schemes this class serves; a subclass that sets its own joins :attr:`registry`.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: The class serving each scheme: the last class defined for it.
    registry: ClassVar[dict[str, type[Backend]]] = {}
    #: When the last failure of the store was logged, and how many were not since (see
    #: :data:`_REPORT_EVERY`).
    _reported: float = float("-inf")
    _unreported: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the store calls a backend defines so that the driver errors that
        :meth:`unavailable` recognises leave them as :class:`StoreUnavailable`: one place per
        backend, however many methods it has, and a third-party backend gets it for free."""
        super().__init_subclass__(**kwargs)
        # Only schemes of its own: a subclass of a built-in backend does not take its schemes.
        for scheme in cls.__dict__.get("schemes", ()):
            Backend.registry[scheme] = cls
        for name in _STORE_CALLS & cls.__dict__.keys():
            setattr(cls, name, _guarded(cls.__dict__[name]))
        if "lock" in cls.__dict__:
            cls.lock = _guarded_lock(cls.__dict__["lock"])  # type: ignore[method-assign]

    @classmethod
    def from_url(cls, url: str, *, root: str, prefix: str) -> Backend:
        """The backend ``url`` names: a path in it relative to ``root`` (the app's folder),
        keys under ``prefix`` where the store is shared with others. By default the URL names
        nothing more than the class (``memory://``)."""
        return cls()

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
        """:meth:`unavailable` for ``error``, any password taken out of its message, logged
        as an error (at most every :data:`_REPORT_EVERY` s, with the count of those not logged
        in between). Of the driver's error only its type is logged: its text may quote a
        command's arguments or a URL, and the message says what failed in words chosen not to."""
        if isinstance(error, StoreUnavailable):
            return None  # already translated by an inner call: let it through
        unavailable = self.unavailable(error)
        if unavailable is None:
            return None
        message = _without_passwords(unavailable.message)
        unavailable.message, unavailable.args = message, (message,)
        if time.monotonic() - self._reported > _REPORT_EVERY:
            since = f"; {self._unreported} more calls failed since the last report" if self._unreported else ""
            self._reported, self._unreported = time.monotonic(), 0
            logger.error("%s (%s%s)", message, type(error).__name__, since)
        else:
            self._unreported += 1
        return unavailable


def _without_passwords(text: str) -> str:
    for password in _PASSWORDS:
        text = password.sub(r"\1***", text)
    return text


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

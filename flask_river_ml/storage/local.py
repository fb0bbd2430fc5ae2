"""The rules of a commit, once in Python, for the stores that run them in this process.

The memory and SQLite stores make a commit inside their own atomic step (a lock, a
transaction) through a :class:`View` of their data; redis runs the same rules in its Lua
script. What a commit checks and writes, and how a timing moves, is decided here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .base import EXISTS, TAKEN, Change, Guard, Outcome, Records, Tally

#: ``(count, total, weighted mean)`` of a timing.
Timed = tuple[int, int, float]
#: What :meth:`View.load` reads: the values, the log's head, the timings.
Loaded = tuple[list[bytes | None], int, list[Timed | None]]


class View(Protocol):
    """A store's data inside one of its atomic steps."""

    def load(self, keys: Sequence[str], log: str | None, timings: Sequence[str]) -> Loaded:
        """What a commit reads, read together (one statement where the store is SQL): the
        live values under ``keys``, the number of the last record ever appended to ``log``
        (0 for none, or without a log), and the timings under ``timings``."""

    def records(self, log: str, after: int) -> Records:
        """The records of ``log`` after ``after``."""

    def put(self, key: str, value: bytes, ttl: float | None) -> None: ...

    def remove(self, key: str) -> None: ...

    def push(self, log: str, record: bytes) -> int:
        """Append ``record`` after the last record ever appended to ``log``; its number."""

    def put_timing(self, key: str, timing: tuple[int, int, float]) -> None: ...


def commit_in(view: View, change: Change, guard: Guard | None) -> Outcome:
    """Make ``change`` through ``view`` if ``guard`` holds, and its ``take`` and ``create``
    can be made; otherwise change nothing and say why (see :class:`Outcome`).

    Every commit of every learn and predict runs this: it reads by position rather than
    building lookups, and each part costs only where the change has it.
    """
    take, create, observes, retracts = change.take, change.create, change.observes, change.retracts
    keys = [] if guard is None else [guard.key]
    if take is not None:
        keys.append(take[0])
    if create is not None:
        keys.append(create[0])
    takes, creates = change.takes, change.creates
    if takes or creates:
        keys += [key for key, _ in takes]
        keys += [put[0] for put in creates]
    timed = [t[0] for t in observes]
    if retracts:
        timed += [timing[0] for timing, _ in retracts]
    if len(timed) > 1:
        # A batch times its samples in two timings of one key: each key is read once.
        timed = list(dict.fromkeys(timed))
    values, head, timings = view.load(keys, None if guard is None else guard.log, timed)
    at = 0
    if guard is not None:
        if values[0] != guard.value:
            return Outcome(False)
        if guard.head is not None and head != guard.head:
            return Outcome(False, unseen=view.records(guard.log, guard.head))
        at = 1
    if take is not None:
        if values[at] != take[1]:
            return Outcome(False, conflict=TAKEN)
        at += 1
    if create is not None and values[at] is not None:
        return Outcome(False, conflict=EXISTS)
    if takes or creates:
        at += create is not None
        for _, value in takes:
            if values[at] != value:
                return Outcome(False, conflict=TAKEN)
            at += 1
        for _ in creates:
            if values[at] is not None:
                return Outcome(False, conflict=EXISTS)
            at += 1
    seq = None
    unseen: Records = []
    if change.record is not None:
        if guard is None:
            raise ValueError("A record is appended to the log of a guard; none was given.")
        if guard.after is not None and head > guard.after:
            unseen = view.records(guard.log, guard.after)
        seq = view.push(guard.log, change.record)
    for key, value, ttl in change.sets:
        view.put(key, value, ttl)
    if create is not None:
        view.put(*create)
    if take is not None:
        view.remove(take[0])
    for put in creates:
        view.put(*put)
    for key, _ in takes:
        view.remove(key)
    tallies: list[Tally] = []
    if timed:
        # By key: one change may time, and take back, one key more than once (a batch's two
        # shares of its duration); each key is written once.
        current = dict(zip(timed, timings, strict=True))
        written: dict[str, Timed] = {}
        for key, duration, alpha, calls in observes:
            timing = written[key] = current[key] = moved(current[key], duration, alpha, calls)
            tallies.append((timing[0], timing[1]))
        # The weight the mean before this change's retracted steps kept through them, by key:
        # the weights multiply, and once a step is not undone, none before it can be.
        weights: dict[str, float] = {}
        for (key, duration, alpha, calls), tally in retracts:
            kept = current[key]
            if kept is not None:
                weight = weights.get(key, 1.0) * (1 - alpha) ** calls
                undo = weight >= UNDOABLE and (kept[0], kept[1]) == tally
                weights[key] = weight if undo else 0.0
                written[key] = current[key] = retracted(kept, duration, alpha, calls, undo)
        for key, timing in written.items():
            view.put_timing(key, timing)
    return Outcome(True, seq, unseen, tallies=tuple(tallies))


def moved(timing: Timed | None, duration: int, alpha: float, calls: int = 1) -> Timed:
    """``(count, total, weighted mean)`` after ``calls`` more calls of ``duration`` each: the
    mean starts at the first duration (of an empty timing), then moves by ``alpha`` towards
    each new one, which for ``calls`` equal durations is one step by ``1 - (1 - alpha) ** calls``."""
    if timing is None or timing[0] == 0:
        return calls, duration * calls, float(duration)
    count, total, mean = timing
    # One call is the step as written: the closed form would round it differently.
    if calls == 1:
        mean = alpha * duration + (1 - alpha) * mean
    else:
        kept = (1 - alpha) ** calls
        mean = kept * mean + (1 - kept) * duration
    return count + calls, total + duration * calls, mean


#: The least weight (``(1 - alpha) ** calls``, multiplied over the steps taken back) the mean
#: before a commit's calls may have kept through them for those steps to be undone: dividing
#: by less would leave mostly rounding error.
UNDOABLE = 1e-6


def retracted(timing: Timed, duration: int, alpha: float, calls: int, undo: bool) -> Timed:
    """``timing`` without ``calls`` calls of ``duration`` that a commit observed.

    The count and the total lose them, exactly. With ``undo``, the weighted mean goes back to
    the one before them: :func:`commit_in` asks for it when the timing is still as that commit
    left it (its step was the last) and the mean before kept enough weight through the steps
    taken back (:data:`UNDOABLE`; a batch of hundreds of calls leaves it next to none).
    Otherwise the mean keeps their duration, whose weight fades with every later call as any
    duration's does. With nothing left the timing is empty, ``(0, 0, 0.0)``, which reads as
    never observed.
    """
    count, total, mean = timing
    if count <= calls:
        return 0, 0, 0.0
    if undo:
        if calls == 1:
            mean = (mean - alpha * duration) / (1 - alpha)
        else:
            kept = (1 - alpha) ** calls
            mean = (mean - (1 - kept) * duration) / kept
    return count - calls, total - duration * calls, mean

"""The request path: a predict or a learn, decided on the replica and committed in one step.

A request decides on this process's replica without reading the store, then commits what it
decided (a record to append, a prediction to keep waiting, the waiting prediction a label
consumes, its timing) in one guarded commit, made only if the model is still the one it
decided on.

A predict's first commit is also guarded by the log position the replica is at: a prediction
is therefore always the stored model's, made after every record written before the request
arrived. A learn's is not: its record is the sample as sent, learnt (and, for the metrics,
predicted) where it lands in the log, so another writer never makes it decide again; the
commit answers with the records the replica had not seen, which it applies before its own.
A waiting prediction is consumed exactly when the learn made from it is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .. import layout
from ..errors import (
    INTERPRETER_EXITS,
    Busy,
    IdentifierExists,
    IdentifierNotFound,
    InvalidInput,
    ModelFailed,
    StoreUnavailable,
)
from ..flavors import Scored, describe, get_flavor
from ..serialization import Codec
from ..stats import EWM_ALPHA
from ..storage import Backend
from ..storage.base import EXISTS, TAKEN, Change, Guard, Outcome, Records, Timing
from .batch_records import Sample
from .entries import entry, read_entry
from .replicas import Learnt, Replica, Replicas, learn_record
from .snapshots import Snapshots

logger = logging.getLogger("flask_river_ml.engine")

#: How many times a request decides again after its commit was refused (a predict's first by
#: a log that moved on, any by a model replaced) before it answers Busy.
_TRIES = 5
_Result = TypeVar("_Result")


@dataclass(slots=True)
class Predict:
    """What a predict wants done: predict ``features``, keep the prediction waiting for its
    label under ``identifier`` (unless None), time the call from ``started`` (perf_counter_ns;
    None: not timed)."""

    features: dict
    identifier: str | None = None
    started: int | None = None
    #: The identifier is one the server just generated (a random UUID): no prediction can wait
    #: under it yet, so the commit does not look.
    generated: bool = False


@dataclass(slots=True)
class Learn:
    """What a learn or a label wants done: learn ``ground_truth`` (None: learn unsupervised)
    from ``features``, or from the prediction waiting under ``identifier``, which is consumed
    with the record; ``prediction`` is one the caller made, for the metrics; timed from
    ``started`` as a learn (a label is not timed)."""

    ground_truth: Any
    features: dict | None = None
    identifier: str | None = None
    prediction: Any = None
    started: int | None = None


@dataclass(slots=True)
class Committed(Generic[_Result]):
    """A commit made: on which replica, the change decided and the decision's result, the
    guard it was made under, and its outcome."""

    replica: Replica
    change: Change
    result: _Result
    guard: Guard
    outcome: Outcome


@dataclass(slots=True)
class Learned:
    """A learn that was written: the features learned, the prediction scored, if any, and the
    ground truth as it was learnt (a label read as the model's class)."""

    features: dict
    scored: Scored | None
    ground_truth: Any = None


class Requests:
    """Predicts and learns over one process's replicas."""

    def __init__(
        self, backend: Backend, codec: Codec, replicas: Replicas, snapshots: Snapshots, waiting_ttl: float
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.replicas = replicas
        self.snapshots = snapshots
        self.waiting_ttl = waiting_ttl

    def predict(self, name: str, request: Predict) -> Scored:
        """The model's prediction, kept waiting under the request's identifier if it has one
        (:class:`IdentifierExists` if a prediction waits there already)."""
        x = request.features

        def decide(replica: Replica) -> tuple[Change, Scored]:
            replica.check_sample(x)
            scored = replica.predict(x)
            if request.identifier is None:
                return Change(observes=_timing(name, "predict", request.started)), scored
            record = self.codec.dumps((x, scored.value, scored.label, scored.proba))
            waiting = (layout.waiting(name, request.identifier), record, self.waiting_ttl)
            timing = _timing(name, "predict", request.started)
            if request.generated:
                return Change(sets=(waiting,), observes=timing), scored
            return Change(create=waiting, observes=timing), scored

        try:
            committed = self._commit(name, decide)
        except ModelFailed as error:
            logger.warning("Model %r could not predict: %s", name, error.message)
            raise
        if committed.outcome.conflict == EXISTS:
            # Replacing it would make the label that comes for it train on other features.
            raise IdentifierExists(
                f"A prediction of model '{name}' already waits for a label under identifier "
                f"'{request.identifier}'; label it, or predict under a new identifier."
            )
        return committed.result

    def learn(self, name: str, request: Learn) -> Learned:
        """Make the model learn durably; the features learned and the prediction scored.

        The record is the sample as sent (:func:`~.replicas.learn_record`), learnt where it
        lands in the log: with a ground truth and no prediction (given or waiting), the model
        predicts first there, so the metrics are prequential; a model that cannot predict yet
        still learns, and the metrics skip the sample. The record and the learn's timing are
        committed together, in one write, guarded by the model entry alone (:meth:`_append`).
        Once it is committed the learn has succeeded, whatever happens to the steps after it
        (applying records of others, the snapshot): later requests make them again. Only the
        record's own failure, which every replica skips, is an error: :class:`ModelFailed`,
        the record counts as never stored, its timing is taken back and the waiting prediction
        it consumed waits again.
        """
        # The waiting prediction learned from, as (key, value): the commit takes it.
        waiting = None if request.identifier is None else self._waiting(name, request.identifier, request.ground_truth)
        if waiting is None:
            x, kept = request.features or {}, None
        else:
            x, value, label, proba = self.codec.loads(waiting[1])
            kept = (value, label, proba)
        sample: Sample = (x, request.ground_truth, kept, request.prediction)
        # Made once: the record does not depend on the replica it is checked on.
        record = self.codec.dumps(learn_record(sample))

        def change() -> Change:
            return Change(record, take=waiting, observes=_timing(name, "learn", request.started))

        committed = self._append(name, sample, change)
        replica, outcome = committed.replica, committed.outcome
        if outcome.conflict == TAKEN:
            raise self._not_waiting(name, request.identifier)
        assert outcome.seq is not None
        # Read before the snapshot, which forgets failures older than itself.
        failure = replica.skipped.get(outcome.seq)
        # After a failure too: the rebuild's snapshot spares the next one its replay.
        if failure is not None or self.snapshots.due(replica):
            self.snapshots.try_take(name, replica)
        if failure is not None:
            logger.warning(
                "Model %r could not learn record %d, which every replica skips: %s", name, outcome.seq, failure
            )
            if waiting is not None:
                # The record is skipped everywhere: its prediction waits for a label again.
                self.backend.add(*waiting, self.waiting_ttl)
            self.untime(name, committed)
            raise ModelFailed(failure)
        if committed.result is None:
            # Not learnt here (a snapshot past it was loaded, or applying it waits for a later
            # request): told as it was sent.
            return Learned(x, None if kept is None else Scored(*kept), request.ground_truth)
        y, made = committed.result
        return Learned(x, made, y)

    def _append(self, name: str, sample: Sample, change: Callable[[], Change]) -> Committed[Learnt | None]:
        """Check ``sample`` on this process's replica, commit ``change()``, which appends its
        record, then bring the replica through it; the replica, the change, what the sample was
        learnt as (None when this replica did not learn it), the guard and the outcome (written,
        or refused by its ``take``).

        No read of the store comes first, and the commit is guarded by the model entry alone:
        the record is learnt where it lands, so a writer that appended meanwhile never makes
        the learn decide again. The commit answers with the records between the replica's
        position and the new record, which the replica applies before its own, without asking
        the store again. The replica's lock is held from the check to the record learnt, so no
        other thread of this process learns it first: its sender learns it, sees the
        prediction it was scored with, and hears of its failure. When the model was replaced
        the replica reloads and checks again (deleted: :class:`ModelNotFound`); a sample
        refused by a replica not checked against the store is checked again on a fresh one
        before the refusal is believed.
        """
        held = self.replicas.held(name)
        replica, fresh = (self.replicas.get(name), True) if held is None else (held, False)
        for _ in range(_TRIES):
            with replica.lock:
                try:
                    replica.check_learn(sample)
                except (InvalidInput, ModelFailed):
                    if fresh:
                        raise
                else:
                    current = entry(replica.flavor.name, replica.generation)
                    guard = Guard(layout.log(name), None, layout.model(name), current, replica.seq)
                    made = change()
                    outcome = self.backend.commit(made, guard)
                    if outcome.written:
                        assert outcome.seq is not None
                        learnt = self._applied(name, replica, outcome.seq, sample, outcome.unseen)
                        return Committed(replica, made, learnt, guard, outcome)
                    if outcome.conflict is not None:
                        return Committed(replica, made, None, guard, outcome)
            replica, fresh = self.replicas.get(name), True
        raise Busy(f"Model '{name}' was replaced while this request was answered; try again shortly.")

    def _applied(self, name: str, replica: Replica, seq: int, sample: Sample, unseen: Records) -> Learnt | None:
        """:meth:`Replicas.applied`, for a record that is stored: nothing that fails there but
        the record itself (in ``replica.skipped``) undoes the learn."""
        try:
            return self.replicas.applied(name, replica, seq, sample, unseen)
        except INTERPRETER_EXITS:
            raise
        except BaseException as error:  # noqa: BLE001 - the record is stored: the learn stands
            logger.warning(
                "Model %r: record %d is stored; applying it waits for a later request (%s).", name, seq, describe(error)
            )
            return None

    def _waiting(self, name: str, identifier: str, y: Any) -> tuple[str, bytes]:
        """The key and value of the prediction a learn names; an absent model and a ground
        truth its flavor refuses are told before the identifier is looked up."""
        get_flavor(read_entry(self.backend, name)["flavor"]).check_target(y)
        key = layout.waiting(name, identifier)
        blob = self.backend.get(key)
        if blob is None:
            raise self._not_waiting(name, identifier)
        return key, blob

    @staticmethod
    def _not_waiting(name: str, identifier: str | None) -> IdentifierNotFound:
        return IdentifierNotFound(
            f"No prediction of model '{name}' waits for a label under identifier '{identifier}' "
            "(it was never made for this model, was labelled already, or expired)."
        )

    def untime(self, name: str, committed: Committed[Any]) -> None:
        """Take the timing of a learn (or batch) whose record failed out of the stats, which count the
        calls that succeeded; only while the model is the one it was committed to (a model
        deleted since has no stats left, and a new one under its name has stats of its own)."""
        # Last first: each is then taken back from the timing as its own step left it (a
        # batch times one call per sample under one key).
        retracts = tuple(zip(reversed(committed.change.observes), reversed(committed.outcome.tallies), strict=True))
        if not retracts:
            return
        guard = Guard(committed.guard.log, None, committed.guard.key, committed.guard.value)
        try:
            self.backend.commit(Change(retracts=retracts), guard)
        except StoreUnavailable as error:
            logger.warning("Model %r: a learn that failed stays counted in its stats (%s).", name, error.message)

    def _commit(self, name: str, decide: Callable[[Replica], tuple[Change, _Result]]) -> Committed[_Result]:
        """Decide a predict (or a predict batch) on this process's replica, then commit the
        change decided, guarded by the model entry it was decided on; the replica, the
        decision, its result and the outcome (written, or refused by its own ``create``).

        No read of the store comes first. The first commit is also guarded by the log position
        the replica is at, so when nobody else wrote a request costs one write. When that
        guard fails, nothing was written: the replica applies the records it had not seen (or
        reloads, if the model was replaced; :class:`ModelNotFound` if deleted) and decides
        again. It is then at least as new as the log was after the request arrived, which is
        all a request needs, so later commits check only that the model is still the same:
        racing writers never make each other wait for long. A decision refused by a replica
        not checked against the store is made again on a fresh one before it is believed.
        """
        held = self.replicas.held(name)
        replica, fresh = (self.replicas.get(name), True) if held is None else (held, False)
        for attempt in range(_TRIES):
            try:
                with replica.lock:
                    change, result = decide(replica)
                    current = entry(replica.flavor.name, replica.generation)
                    guard = Guard(layout.log(name), None if attempt else replica.seq, layout.model(name), current)
            except (InvalidInput, ModelFailed):
                if fresh:
                    raise
                replica, fresh = self.replicas.get(name), True
                continue
            outcome = self.backend.commit(change, guard)
            if outcome.written or outcome.conflict is not None:
                return Committed(replica, change, result, guard, outcome)
            if outcome.unseen:
                self.replicas.catch_up(name, replica, outcome.unseen)
            else:
                replica = self._refreshed(name, replica, attempt)
            fresh = True
        raise Busy(f"Model '{name}' was replaced while this request was answered; try again shortly.")

    def _refreshed(self, name: str, replica: Replica, attempt: int) -> Replica:
        """The replica to decide on after a guarded commit found nothing new in the log.

        Either the model entry changed (the replica reloads) or, on the first try, the log
        ends before the replica: the store lost records it had applied (restored from an
        older copy). That replica no longer matches the store and starts again from it.
        """
        generation, seq = replica.generation, replica.seq
        fresh = self.replicas.get(name)
        if attempt == 0 and fresh is replica and replica.generation == generation and replica.seq == seq:
            logger.warning("Model %r: the log ends before record %d, which this process applied; reloading.", name, seq)
            replica.discard()
            fresh = self.replicas.get(name)
        return fresh


def _timing(name: str, kind: str, started: int | None) -> tuple[Timing, ...]:
    """The timing of a ``kind`` call of model ``name`` started at ``started``, if timed: its
    duration up to now, as its write is about to be made."""
    if started is None:
        return ()
    return (Timing(layout.timings(name, kind), time.perf_counter_ns() - started, EWM_ALPHA),)

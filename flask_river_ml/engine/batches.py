"""Batches: many samples learnt or predicted in one request, as the same samples sent one by
one would be.

A learn batch is checked whole before anything is written: the predictions its identifiers
name are looked up, and every sample is checked against the replica (its features, its ground
truth as the model would read it, a caller's prediction). One sample refused refuses the batch,
naming the sample, and nothing is written. The batch is then written in one guarded commit:
one log record holding every sample (:mod:`.batch_records`) and the removal of the waiting
predictions it learns from, made only if every one of them still waits. The sender holds the
replica's lock from its decision to the last sample learnt, so it learns its own record,
sample by sample, and sees each sample's prediction and the metrics after it: the events it
announces are those of as many single learns. A sample that fails in the model fails the
record, which every replica skips whole, and the sender's waiting predictions wait again. The
learn timings, written in the same commit, count one call per sample, each its share of the
batch's duration up to its write; a batch whose record fails takes them back.

A predict batch is decided and committed with the rules of a single predict
(:meth:`Requests._commit`): every prediction is the stored model's, made after every record
written before the request arrived; the predictions that wait for their labels are written in
the same commit, all of them or, when one identifier is taken already (409), none.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import layout
from ..errors import (
    INTERPRETER_EXITS,
    Busy,
    IdentifierExists,
    IdentifierNotFound,
    ModelFailed,
    RiverMLError,
)
from ..flavors import Scored, describe, get_flavor, metric_values
from ..stats import EWM_ALPHA
from ..storage import Backend
from ..storage.base import EXISTS, TAKEN, Change, Guard, Put, Timing
from .batch_records import Each, Sample, record
from .batch_records import learn as learn_samples
from .entries import entry, read_entry
from .replicas import Replica
from .requests import _TRIES, Committed, Learn, Learned, Predict, Requests

logger = logging.getLogger("flask_river_ml.engine")

#: A sample's features and the prediction waiting for it (value, label, probabilities), if any.
_Input = tuple[dict, tuple[Any, Any, Any] | None]
#: The waiting prediction a sample learns from: its key, its value, the features and the
#: prediction kept in it.
_Waiting = tuple[str, bytes, dict, tuple[Any, Any, Any]]


@dataclass(slots=True)
class LearnedBatch:
    """A learn batch that was written: how many samples, and, when the call asked to watch,
    each sample as it was learnt (its features, the prediction scored, its ground truth as
    learnt) with the metrics right after it: what as many single learns would announce."""

    count: int
    watched: list[tuple[Learned, dict[str, Any]]] = field(default_factory=list)


class Batches:
    """Learn and predict batches over one process's replicas."""

    def __init__(self, requests: Requests) -> None:
        self.requests = requests
        self.backend = requests.backend
        self.codec = requests.codec
        self.replicas = requests.replicas
        self.snapshots = requests.snapshots

    # --- learn ---------------------------------------------------------------------------------

    def learn(
        self, name: str, samples: Sequence[Learn], started: int | None = None, watch: bool = False
    ) -> LearnedBatch:
        """Make the model learn ``samples`` durably, in order, in one log record.

        Checked whole first (the error of the first sample refused names its index; nothing is
        written). Once the record is committed the batch has succeeded, whatever happens to the
        steps after it; only a sample's failure in the model is an error (:class:`ModelFailed`
        naming it): the record counts as never stored and its waiting predictions wait again.
        """
        if not samples:
            read_entry(self.backend, name)
            return LearnedBatch(0)
        waiting = self._waiting(name, samples)
        inputs: list[_Input] = [
            (sample.features or {}, None) if index not in waiting else waiting[index][2:]
            for index, sample in enumerate(samples)
        ]
        takes = tuple((key, blob) for key, blob, *_ in waiting.values())
        watched: list[tuple[Learned, dict[str, Any]]] = []

        def decide(replica: Replica) -> tuple[Change, list[Sample]]:
            recorded = _checked(replica, samples, inputs)
            timings = _timings(name, "learn", started, len(samples))
            return Change(self.codec.dumps(record(recorded)), takes=takes, observes=timings), recorded

        with self._committed(name, decide) as committed:
            replica, recorded, outcome = committed.replica, committed.result, committed.outcome
            if outcome.conflict == TAKEN:
                raise _taken(self.backend, name, samples, waiting)
            assert outcome.seq is not None
            seq = outcome.seq
            each = _watcher(replica, watched) if watch else None
            learnt, failure = self._applied(name, replica, seq, recorded, each)
        if failure is not None or self.snapshots.due(replica):
            self.snapshots.try_take(name, replica)
        if failure is not None:
            logger.warning("Model %r could not learn record %d, which every replica skips: %s", name, seq, failure)
            for key, blob in takes:
                self.backend.add(key, blob, self.requests.waiting_ttl)
            self.requests.untime(name, committed)
            raise failure
        if watch and not learnt:
            watched = _as_recorded(replica, recorded)
        return LearnedBatch(len(samples), watched)

    def _waiting(self, name: str, samples: Sequence[Learn]) -> dict[int, _Waiting]:
        """The waiting prediction each sample with an identifier learns from, by index. As for a
        single learn, an absent model and a ground truth its flavor refuses are told before the
        identifier is looked up; an identifier two samples name is the later one's error."""
        named = [(index, sample) for index, sample in enumerate(samples) if sample.identifier is not None]
        if not named:
            return {}
        flavor = get_flavor(read_entry(self.backend, name)["flavor"])
        found: dict[int, _Waiting] = {}
        first: dict[str, int] = {}
        for index, sample in named:
            try:
                flavor.check_target(sample.ground_truth)
                key = layout.waiting(name, sample.identifier or "")
                if key in first:
                    raise IdentifierNotFound(
                        f"Sample {first[key]} of this batch learns from the prediction of model '{name}' waiting "
                        f"under identifier '{sample.identifier}' already; a prediction is learnt from once."
                    )
                first[key] = index
                blob = self.backend.get(key)
                if blob is None:
                    raise Requests._not_waiting(name, sample.identifier)
                x, value, label, proba = self.codec.loads(blob)
            except RiverMLError as error:
                raise error.at_sample(index) from None
            found[index] = (key, blob, x, (value, label, proba))
        return found

    @contextlib.contextmanager
    def _committed(
        self, name: str, decide: Callable[[Replica], tuple[Change, list[Sample]]]
    ) -> Iterator[Committed[list[Sample]]]:
        """Decide on this process's replica, up to date with the store, and commit the change
        decided; the block runs with the replica's lock still held, so no other thread of this
        process learns the record before its sender does.

        The commit is guarded by the model entry alone: a record's samples are read and
        predicted where they are learnt, so the record stands wherever in the log it lands.
        When the model was replaced meanwhile the replica reloads and decides again (deleted:
        :class:`ModelNotFound`).
        """
        for _ in range(_TRIES):
            replica = self.replicas.get(name)
            with replica.lock:
                change, recorded = decide(replica)
                current = entry(replica.flavor.name, replica.generation)
                guard = Guard(layout.log(name), None, layout.model(name), current)
                outcome = self.backend.commit(change, guard)
                if outcome.written or outcome.conflict is not None:
                    yield Committed(replica, change, recorded, guard, outcome)
                    return
        raise Busy(f"Model '{name}' was replaced while this batch was answered; try again shortly.")

    def _applied(
        self, name: str, replica: Replica, seq: int, recorded: list[Sample], each: Each | None
    ) -> tuple[bool, ModelFailed | None]:
        """Bring the replica (its lock held) to record ``seq``, just appended from ``recorded``:
        the records others appended before it first, from the log, then it, from memory. Whether
        this thread learnt it (``each`` saw every sample), and its failure, if it failed.
        Nothing else here undoes the batch, which stands once its record is stored."""
        if seq <= replica.seq:
            # The log ended before records this replica applied: the store lost them (restored
            # from an older copy). The replica no longer matches it; the next request reloads.
            logger.warning("Model %r: the log ends before record %d, which this process applied.", name, replica.seq)
            replica.discard()
            return False, None
        try:
            if replica.seq < seq - 1:
                self.replicas.catch_up(name, replica, upto=seq - 1)
            if replica.seq != seq - 1:
                # Reloaded from a snapshot that holds the record already.
                return False, _failure(replica.skipped.get(seq))
            try:
                learn_samples(replica, recorded, each)
            except ModelFailed as error:
                replica.skipped[seq] = error.message
                self.replicas.rebuild(name, replica)
                self.replicas.catch_up(name, replica)
                return False, error
            replica.seq = seq
            return True, None
        except INTERPRETER_EXITS:
            raise
        except BaseException as error:  # noqa: BLE001 - the record is stored: the batch stands
            logger.warning(
                "Model %r: record %d is stored; applying it waits for a later request (%s).", name, seq, describe(error)
            )
            return False, _failure(replica.skipped.get(seq))

    # --- predict -------------------------------------------------------------------------------

    def predict(self, name: str, samples: Sequence[Predict], started: int | None = None) -> list[Scored]:
        """The model's predictions, each kept waiting under its sample's identifier, if it has
        one; :class:`IdentifierExists` naming the sample when a prediction waits there already,
        and then none is kept."""
        if not samples:
            read_entry(self.backend, name)
            return []
        _check_distinct(name, samples)
        ttl = self.requests.waiting_ttl

        def decide(replica: Replica) -> tuple[Change, list[Scored]]:
            # Its lock is held: the model is asked without taking it again.
            predict, check_sample, dumps = replica.predict_held, replica.check_sample, self.codec.dumps
            predictions: list[Scored] = []
            generated: list[Put] = []
            given: list[Put] = []
            for index, sample in enumerate(samples):
                x = sample.features
                try:
                    check_sample(x)
                    scored = predict(x)
                except RiverMLError as error:
                    raise error.at_sample(index) from None
                predictions.append(scored)
                if sample.identifier is not None:
                    kept = dumps((x, scored.value, scored.label, scored.proba))
                    (generated if sample.generated else given).append(
                        (layout.waiting(name, sample.identifier), kept, ttl)
                    )
            timings = _timings(name, "predict", started, len(samples))
            return Change(sets=tuple(generated), creates=tuple(given), observes=timings), predictions

        try:
            committed = self.requests._commit(name, decide)
        except ModelFailed as error:
            logger.warning("Model %r could not predict: %s", name, error.message)
            raise
        if committed.outcome.conflict == EXISTS:
            raise _existing(self.backend, name, samples)
        return committed.result


def _checked(replica: Replica, samples: Sequence[Learn], inputs: Sequence[_Input]) -> list[Sample]:
    """The samples of the record, each checked on the replica as it is (its lock is held):
    its features, and its ground truth and prediction as the model reads them now. The
    record keeps them as they were sent: whoever learns it reads them again, after the
    samples before them, as single learns would."""
    recorded: list[Sample] = []
    for index, (sample, (x, waiting)) in enumerate(zip(samples, inputs, strict=True)):
        checked: Sample = (x, sample.ground_truth, waiting, sample.prediction)
        try:
            replica.check_learn(checked)
        except RiverMLError as error:
            raise error.at_sample(index) from None
        recorded.append(checked)
    return recorded


def _taken(backend: Backend, name: str, samples: Sequence[Learn], waiting: dict[int, _Waiting]) -> RiverMLError:
    """The error of a batch whose commit found a prediction it learns from gone (labelled
    meanwhile by another request): the first such sample's."""
    for index, (key, blob, *_) in waiting.items():
        if backend.get(key) != blob:
            return Requests._not_waiting(name, samples[index].identifier).at_sample(index)
    return IdentifierNotFound(f"A prediction of model '{name}' this batch learns from was labelled meanwhile.")


def _existing(backend: Backend, name: str, samples: Sequence[Predict]) -> RiverMLError:
    """The error of a batch whose commit found a prediction waiting under one of its
    identifiers: the first such sample's."""
    for index, sample in enumerate(samples):
        if sample.identifier is None or sample.generated:
            continue
        if backend.get(layout.waiting(name, sample.identifier)) is not None:
            return _exists(name, sample.identifier).at_sample(index)
    return IdentifierExists(f"A prediction of model '{name}' already waits under one of the batch's identifiers.")


def _exists(name: str, identifier: str) -> IdentifierExists:
    # Replacing it would make the label that comes for it train on other features.
    return IdentifierExists(
        f"A prediction of model '{name}' already waits for a label under identifier '{identifier}'; "
        "label it, or predict under a new identifier."
    )


def _check_distinct(name: str, samples: Sequence[Predict]) -> None:
    """Refuse a batch that keeps two predictions under one identifier: the later sample's
    would find the earlier one's waiting, as the later of two predicts would."""
    first: dict[str, int] = {}
    for index, sample in enumerate(samples):
        if sample.identifier is None:
            continue
        if sample.identifier in first:
            raise IdentifierExists(
                f"Sample {first[sample.identifier]} of this batch keeps its prediction of model '{name}' under "
                f"identifier '{sample.identifier}' already; give each sample an identifier of its own."
            ).at_sample(index)
        first[sample.identifier] = index


def _watcher(replica: Replica, watched: list[tuple[Learned, dict[str, Any]]]) -> Each:
    """What the sender calls after each sample it learns: the sample as learnt, and the metrics
    then (a metric that cannot be read leaves them out: the sample is learnt)."""

    def each(x: dict, y: Any, made: Scored | None) -> None:
        watched.append((Learned(x, made, y), _metrics(replica)))

    return each


def _as_recorded(replica: Replica, recorded: list[Sample]) -> list[tuple[Learned, dict[str, Any]]]:
    """The samples of a record this thread did not learn itself (another replica's snapshot
    brought it): as they were sent, with the metrics the replica has now."""
    with replica.lock:
        metrics = _metrics(replica)
    return [(Learned(x, None if w is None else Scored(*w), y), metrics) for x, y, w, _ in recorded]


def _metrics(replica: Replica) -> dict[str, Any]:
    """The replica's metrics now (its lock is held); none when one cannot be read: the samples
    are learnt, and only their announcement lacks them."""
    try:
        return metric_values(replica.metrics)
    except ModelFailed:
        return {}


def _failure(message: str | None) -> ModelFailed | None:
    return None if message is None else ModelFailed(message)


def _timings(name: str, kind: str, started: int | None, count: int) -> tuple[Timing, ...]:
    """The timings of a batch of ``count`` samples started at ``started`` (perf_counter_ns),
    if timed: one call per sample, each its share of the batch's duration, so that the count
    and the total are those of as many calls."""
    if started is None or not count:
        return ()
    share, rest = divmod(time.perf_counter_ns() - started, count)
    key = layout.timings(name, kind)
    # The first ``rest`` calls take one nanosecond more.
    shares = (Timing(key, share + 1, EWM_ALPHA, rest), Timing(key, share, EWM_ALPHA, count - rest))
    return tuple(timing for timing in shares if timing.calls)

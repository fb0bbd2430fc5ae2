"""This process's replicas of the stored models, and how they follow the log.

Each process keeps a *replica* of every model it serves: the unpickled model and its metrics,
with the number of the last log record applied. Catching up applies, in log order, every
record it has not applied, so every process applies the same records in the same order and
deterministic replicas stay identical. A replica of another generation than the model entry's
reloads from the snapshot.

A learn's record is ``("learn", sample)``, one sample as a batch record holds them
(:data:`~.batch_records.Sample`: the features, the ground truth and the caller's prediction as
sent, the waiting prediction it learns from). It is learnt where it lands in the log: whoever
applies it predicts first when the metrics need a prediction and none came with it, and reads
a label spelt as a class there, so the record needs no particular place in the log. Records
written before learns were so, ``(features, ground_truth, value, label, probabilities)``
with the ground truth read and the prediction made when the learn was decided, are applied as
they were written.

A record whose learn raises (a Rust panic included) may have changed the model halfway: the
replica is rebuilt from the snapshot and the log without that record, so every replica, in
every process, skips it the same way and no snapshot ever holds half a record.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import layout
from ..bounds import OutOfBounds, Plan, check_expansion, expansion_plan
from ..errors import INTERPRETER_EXITS, Busy, InvalidInput, ModelFailed, ModelNotFound, TamperedData
from ..flavors import Flavor, Scored, get_flavor, model_code
from ..serialization import Codec
from ..storage import Backend
from ..storage.base import Records
from .batch_records import Sample, read, samples_of
from .batch_records import learn as learn_samples
from .entries import parse_entry

logger = logging.getLogger("flask_river_ml.engine")

#: How many snapshots one catch-up loads, while others trim the log past it, before it gives up.
_RELOADS = 5
LEARN_FAILED = "The model could not learn from this sample"
#: The tag of a single learn's record.
LEARN = "learn"
#: A sample as it was learnt: its ground truth as the model read it, and the prediction scored.
Learnt = tuple[Any, Scored | None]


def learn_record(sample: Sample) -> tuple[str, Sample]:
    """The record of a single learn of ``sample``, for the codec to sign."""
    return LEARN, sample


def sample_of(loaded: Any) -> Sample | None:
    """The sample of a loaded record if it is a single learn's (not a batch's, nor a 5-tuple
    written before learns were learnt where they land)."""
    if type(loaded) is tuple and len(loaded) == 2 and loaded[0] == LEARN:
        sample: Sample = loaded[1]
        return sample
    return None


@dataclass
class Snapshot:
    """What a snapshot blob holds."""

    model: Any
    metrics: list
    seq: int
    generation: str
    flavor: str
    #: Records skipped since the snapshot before this one, as (number, failure): a process
    #: that loads this snapshot still tells a sender its record failed. (A class default, so
    #: snapshots written before failures were kept load too.)
    skipped: tuple[tuple[int, str], ...] = ()


@dataclass
class Replica:
    """This process's copy of one model, at log position ``seq``."""

    flavor: Flavor
    model: Any
    metrics: list
    seq: int
    #: The model entry's generation this replica is of; None once discarded.
    generation: str | None
    snapshot_seq: int
    #: Records that failed when applied, by number, with their failure: a rebuild skips
    #: them, and their sender reads its error here whichever thread applied them. Kept until
    #: a second snapshot passes them.
    skipped: dict[int, str] = field(default_factory=dict)
    # Guards the model: river models are not thread-safe, and records are applied in order.
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: Where the model multiplies a sample's features, read once: its parameters never change.
    expansion: Plan = field(init=False)
    #: Samples learnt since the snapshot beyond one per record (a batch record holds many): a
    #: snapshot is due by samples, so a crash replays about as many whatever their records.
    extra_samples: int = 0

    def __post_init__(self) -> None:
        self.expansion = expansion_plan(self.model)

    def check_sample(self, x: dict) -> None:
        """Refuses a new sample that the model would expand into too many terms."""
        try:
            check_expansion(self.expansion, len(x))
        except OutOfBounds as error:
            raise InvalidInput(str(error)) from None

    def predict(self, x: dict) -> Scored:
        with self.lock:
            return self.predict_held(x)

    def predict_held(self, x: dict) -> Scored:
        """:meth:`predict` for a caller that holds the lock already (a batch, a learn being
        applied), without taking it again for every sample."""
        return self.flavor.predict(self.model, dict(x))

    def reset(self, state: Snapshot, kept: dict[int, str]) -> None:
        """Become the snapshot ``state`` (the lock is held), still skipping the records ``kept``."""
        self.flavor = get_flavor(state.flavor)
        self.model, self.metrics = state.model, state.metrics
        self.seq = self.snapshot_seq = state.seq
        self.generation = state.generation
        self.skipped = {**dict(state.skipped), **kept}
        self.expansion = expansion_plan(self.model)
        self.extra_samples = 0

    def discard(self) -> None:
        """Mark a replica that may hold half a record and could not be rebuilt: it matches no
        model entry, so every request reloads it from the store and no snapshot is taken of it."""
        self.generation = None

    def state(self) -> Snapshot:
        """What a snapshot of this replica holds (its lock is held)."""
        assert self.generation is not None
        kept = tuple((seq, error) for seq, error in self.skipped.items() if seq > self.snapshot_seq)
        return Snapshot(self.model, self.metrics, self.seq, self.generation, self.flavor.name, kept)

    def check_learn(self, sample: Sample) -> None:
        """Refuse, before anything is written, a sample that this replica as it is refuses
        (its lock is held): features it would expand into too many terms, a ground truth (as
        the model reads it) or a caller's prediction that its flavor cannot use. The record
        keeps the sample as sent: whoever learns it reads it again, where it lands."""
        x, y, waiting, prediction = sample
        self.check_sample(x)
        read(self.flavor, self.model, self.metrics, x, y, None if waiting is None else Scored(*waiting), prediction)

    def learn(self, sample: Sample) -> Learnt:
        """Learn ``sample`` at this replica's place in the log (the lock is held), as a single
        learn does: the model predicts first when the metrics need a prediction and none was
        given or waits, a label spelt as one of its classes is read as it, then it learns and
        the metrics are scored. The ground truth learnt and the prediction scored;
        :class:`ModelFailed` when the model or a metric raises, or the target read is refused.
        """
        x, y, waiting, prediction = sample
        made = None if waiting is None else Scored(*waiting)
        if made is None and prediction is None and y is not None:
            # The prediction only feeds the metrics: a model that cannot make it learns anyway.
            try:
                made = self.predict_held(x)
            except ModelFailed:
                pass
        try:
            y, made = read(self.flavor, self.model, self.metrics, x, y, made, prediction)
        except InvalidInput as error:
            # Refused at this place of the log, so on every replica: the record is skipped.
            raise ModelFailed(error.message) from error
        self.apply(x, y, made or Scored(None))
        return y, made

    def apply(self, x: dict, y: Any, scored: Scored) -> None:
        """Learn one record (the lock is held); :class:`ModelFailed` when the model or a metric raises."""
        try:
            with model_code(LEARN_FAILED):
                if y is None:
                    self.model.learn_one(dict(x))
                    return
                self.model.learn_one(dict(x), y)
                self.flavor.score(self.metrics, y, scored)
        except INTERPRETER_EXITS:
            # The worker is stopping halfway into the model: its exit snapshot must not save it.
            self.discard()
            raise


class Replicas:
    """The replicas of one process, kept up to date with one store."""

    def __init__(self, backend: Backend, codec: Codec) -> None:
        self.backend = backend
        self.codec = codec
        self._replicas: dict[str, Replica] = {}
        self._mutex = threading.Lock()

    def get(self, name: str) -> Replica:
        """This process's replica of ``name``, up to date with the log."""
        replica = self.held(name)
        # The model entry and the log tail in one round trip: most requests need nothing more.
        raw, tail = self.backend.peek(layout.model(name), layout.log(name), 0 if replica is None else replica.seq)
        records: Records | None = tail
        if raw is None:
            self.drop(name)
            raise ModelNotFound(name)
        if replica is None or replica.generation != parse_entry(raw)["generation"]:
            replica, records = self._load(name), None
        self.catch_up(name, replica, records)
        return replica

    def held(self, name: str) -> Replica | None:
        """This process's replica of ``name`` as it is, if it has one."""
        with self._mutex:
            return self._replicas.get(name)

    def all(self) -> list[tuple[str, Replica]]:
        with self._mutex:
            return list(self._replicas.items())

    def drop(self, name: str) -> None:
        with self._mutex:
            self._replicas.pop(name, None)

    def snapshot(self, name: str) -> Snapshot:
        """The stored snapshot of ``name``."""
        blob = self.backend.get(layout.snapshot(name))
        if blob is None:
            raise ModelNotFound(name)
        # The snapshot carries its flavor: the model entry may already describe a newer model.
        state: Snapshot = self.codec.loads(blob)
        return state

    def _load(self, name: str) -> Replica:
        state = self.snapshot(name)
        flavor = get_flavor(state.flavor)
        replica = Replica(
            flavor, state.model, state.metrics, state.seq, state.generation, state.seq, dict(state.skipped)
        )
        with self._mutex:
            current = self._replicas.get(name)
            # Another thread may have loaded the same generation meanwhile: one replica each.
            if current is not None and current.generation == replica.generation:
                return current
            self._replicas[name] = replica
        logger.info("Model %r: loaded from its snapshot at record %d.", name, state.seq)
        return replica

    def catch_up(self, name: str, replica: Replica, records: Records | None = None, upto: int | None = None) -> None:
        """Apply every log record after the replica's position (up to record ``upto``), in order.

        ``records`` is a log tail read before the replica's lock was taken, if any: what
        another thread applied meanwhile is dropped from it. A record that raises may have
        changed the model halfway: the replica is rebuilt from the snapshot and the log
        without it (:meth:`rebuild`), as every replica that applies it does; its failure is
        kept in ``replica.skipped`` for the thread that sent it.
        """
        with replica.lock:
            start = replica.seq
            while not self._apply_all(replica, self._unapplied(name, replica, records), upto):
                self.rebuild(name, replica)
                records = None
            if replica.seq != start:
                logger.debug("Model %r: caught up with the log from record %d to %d.", name, start, replica.seq)

    def _unapplied(self, name: str, replica: Replica, records: Records | None) -> Records:
        """The log records after the replica's position, from ``records`` if they continue it,
        else read from the store; the replica reloaded if the log was trimmed past it."""
        if records is not None:
            records = [record for record in records if record[0] > replica.seq]
        if records is None or (records and records[0][0] != replica.seq + 1):
            records = self.backend.read(layout.log(name), replica.seq)
        reloads = 0
        while records and records[0][0] != replica.seq + 1:
            # The log was trimmed past this replica by a snapshot: start from that snapshot.
            # Again if another snapshot trimmed further while this one was being read.
            if reloads == _RELOADS:
                # A log that does not continue its snapshot (a store restored in part):
                # answering beats reloading forever.
                raise Busy(f"The log of model '{name}' does not continue from its snapshot yet; try again.")
            logger.info("Model %r: the log was trimmed past record %d; reloading from the snapshot.", name, replica.seq)
            self._reload(name, replica)
            records = self.backend.read(layout.log(name), replica.seq)
            reloads += 1
        return records

    def _apply_all(self, replica: Replica, records: Records, upto: int | None = None) -> bool:
        """Apply ``records`` in order (up to record ``upto``), past those that failed before;
        False, the replica left at the record before, when one fails."""
        for seq, blob in records:
            if upto is not None and seq > upto:
                break
            if seq not in replica.skipped:
                try:
                    # A record that cannot be loaded is skipped too, rather than blocking the log.
                    loaded = self.codec.loads(blob)
                    sample = sample_of(loaded)
                    batch = None if sample is not None else samples_of(loaded)
                    if sample is not None:
                        replica.learn(sample)
                    elif batch is not None:
                        learn_samples(replica, batch)
                    else:
                        x, y, value, label, proba = loaded
                        replica.apply(x, y, Scored(value, label, proba))
                except (ModelFailed, TamperedData) as error:
                    replica.skipped[seq] = error.message
                    return False
            replica.seq = seq
        return True

    def applied(self, name: str, replica: Replica, seq: int, sample: Sample, unseen: Records) -> Learnt | None:
        """Bring the replica to record ``seq``, just appended from ``sample``: first the records
        others appended before it, from ``unseen`` (what the commit answered: those after the
        replica's position), then the record itself, from memory. Records appended after it are
        the next request's to apply, as they would be had they come a moment later.

        What the sample was learnt as (:meth:`Replica.learn`), or None when this replica did
        not learn it: it failed (its failure is in ``replica.skipped``, and the replica was
        rebuilt without it), a snapshot past it was loaded (which carries its failure), or the
        log ends before records this replica applied (a store restored from an older copy:
        the replica is discarded, and the next request reloads it).
        """
        with replica.lock:
            if seq <= replica.seq:
                logger.warning(
                    "Model %r: the log ends before record %d, which this process applied.", name, replica.seq
                )
                replica.discard()
                return None
            if replica.seq < seq - 1:
                # Read from the log unless the answer reaches the record (a log trimmed past
                # the replica's position answers with its rest, which catch_up tells apart).
                complete = bool(unseen) and unseen[-1][0] == seq - 1
                self.catch_up(name, replica, unseen if complete else None, upto=seq - 1)
            if replica.seq != seq - 1:
                return None
            try:
                learnt = replica.learn(sample)
            except ModelFailed as error:
                replica.skipped[seq] = error.message
                self.rebuild(name, replica)
                self.catch_up(name, replica)
                return None
            replica.seq = seq
            return learnt

    def rebuild(self, name: str, replica: Replica) -> None:
        """Start ``replica`` again from the snapshot after a record failed halfway into it (its
        lock is held): the caller then replays the log past ``replica.skipped``.

        The cost is a snapshot load and a replay, paid by failing records only. A replica that
        cannot be rebuilt (the store is unavailable) is discarded, never kept half-changed.
        """
        logger.info("Model %r: a record failed when applied; rebuilding the replica without it.", name)
        try:
            self._reload(name, replica)
        except BaseException:
            replica.discard()
            raise

    def _reload(self, name: str, replica: Replica) -> None:
        """Reset ``replica`` in place from the current snapshot (its lock is held)."""
        state = self.snapshot(name)
        # Failures of this generation after the replica's last snapshot stay, for the replay
        # to skip (those before the new snapshot only for their senders to read).
        kept = {}
        if state.generation == replica.generation:
            kept = {seq: error for seq, error in replica.skipped.items() if seq > replica.snapshot_seq}
        replica.reset(state, kept)

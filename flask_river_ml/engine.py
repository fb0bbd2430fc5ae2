"""The state engine: one consistent, durable model per name, at a per-request cost that does
not grow with the model.

Each process keeps a *replica* of every model it serves: the unpickled model and its metrics,
with the sequence number of the last *log* record applied. A learn appends a small signed
record (features, ground truth, the prediction used for the metrics) to the model's log in
the backend; the append is what makes the learn durable. The process then applies, in log
order, every record it has not yet applied, its own included, so every process applies the
same records in the same order and deterministic replicas stay identical. Requests decide
on the replica without reading the store and write only if the model is still the one they
decided on, the first time only if the log is still where the replica is
(:meth:`Engine._guarded`): a prediction is always the stored model's, made after every record
written before the request arrived.

Every ``snapshot_every`` records the model, its metrics and the sequence number are pickled
into a *snapshot* and the log is trimmed up to it; recovery after a crash is the snapshot
plus a replay of the log. Upload, replace and delete change the model's *generation*; a
replica of another generation reloads from the snapshot. A replacement's snapshot is taken at
the head of the log, so a learn that races it is applied to the new model rather than lost.

Generations are unique over the store's whole life, its loss included: each carries the
store's identity, a random value created with the store's first generation and kept beside
its counter, so a store that lost its data (a redis restarted without persistence, a deleted
SQLite file) starts a new identity and never hands out a generation a replica already has.

A record whose learn raises (a Rust panic included) may have changed the model halfway: the
replica is rebuilt from the snapshot and the log without that record, so every replica, in
every process, skips it the same way and no snapshot ever holds half a record.

Backend layout, for a model ``name``::

    generation        "<store identity>:<counter>", the last generation handed out
    model:<name>      JSON {"flavor", "generation"}: the model exists
    snapshot:<name>   signed pickle of a Snapshot
    snapseq:<name>    the sequence number of that snapshot
    log:<name>        the log (signed pickles of records)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .bounds import OutOfBounds, Plan, check_expansion, expansion_plan
from .errors import INTERPRETER_EXITS, Busy, InvalidInput, ModelExists, ModelFailed, ModelNotFound, TamperedData
from .flavors import Flavor, Scored, describe, get_flavor, metric_values, model_code
from .serialization import Codec
from .storage import Backend
from .storage.base import Guard, Records, Writes

logger = logging.getLogger("flask_river_ml.engine")


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

    def __post_init__(self) -> None:
        self.expansion = expansion_plan(self.model)

    def check_sample(self, x: dict) -> None:
        """Refuses a new sample that the model would expand into too many terms."""
        try:
            check_expansion(self.expansion, len(x))
        except OutOfBounds as error:
            raise InvalidInput(str(error)) from None

    def discard(self) -> None:
        """Mark a replica that may hold half a record and could not be rebuilt: it matches no
        model entry, so every request reloads it from the store and no snapshot is taken of it."""
        self.generation = None


def meta_key(name: str) -> str:
    return f"model:{name}"


def _snapshot_key(name: str) -> str:
    return f"snapshot:{name}"


def _snapseq_key(name: str) -> str:
    return f"snapseq:{name}"


def _log(name: str) -> str:
    return f"log:{name}"


def _lock(name: str) -> str:
    return f"model:{name}"


def _meta(flavor: str, generation: str | None) -> bytes:
    """The model entry: the same bytes for the same model, so a learn can compare them."""
    return json.dumps({"flavor": flavor, "generation": generation}).encode()


_GENERATION_KEY = "generation"


def _next_generation(last: bytes | None) -> bytes:
    """The generation after ``last``: the same store identity, the counter one up.

    A store without a generation (new, or one that lost its data) gets a new random identity:
    what it hands out then differs from everything handed out before. A bare counter (written
    before generations carried an identity) gets an identity too.
    """
    identity, _, counter = (last or b"").decode().rpartition(":")
    if not identity:
        identity = secrets.token_hex(8)
    return f"{identity}:{int(counter or 0) + 1}".encode()


#: How many times a request decides again, after its first try found the log moved on or
#: later ones found the model replaced, before it answers Busy.
_GUARDED_TRIES = 5
#: How many snapshots one catch-up loads, while others trim the log past it, before it gives up.
_RELOADS = 5
_Decision = TypeVar("_Decision")
_Written = TypeVar("_Written")
#: How long a change of a model waits for another one to finish.
_CHANGE_WAIT = 30.0
_LEARN_FAILED = "The model could not learn from this sample"


class Engine:
    """Replicas, log and snapshots of every model stored in one backend."""

    def __init__(self, backend: Backend, codec: Codec, snapshot_every: int = 1000) -> None:
        self.backend = backend
        self.codec = codec
        self.snapshot_every = snapshot_every
        self._replicas: dict[str, Replica] = {}
        self._mutex = threading.Lock()

    # --- models as a whole: these hold the model's lock and pay for (un)pickling --------------

    @contextlib.contextmanager
    def _changing(self, name: str) -> Iterator[None]:
        try:
            with self.backend.lock(_lock(name), timeout=_CHANGE_WAIT):
                yield
        except TimeoutError:
            raise Busy(f"Another change of model '{name}' is in progress; try again shortly.") from None

    def names(self) -> list[str]:
        """The names of every stored model, sorted."""
        return [key.split(":", 1)[1] for key in self.backend.keys("model:")]

    def create(self, name: str, model: Any, flavor: Flavor) -> None:
        """Store a new model; :class:`ModelExists` if the name is taken."""
        with self._changing(name):
            if self.backend.get(meta_key(name)) is not None:
                raise ModelExists(f"A model named '{name}' exists already; delete it first.")
            # A log left by a model deleted halfway (a crash) must not be replayed into this one.
            self.backend.delete_log(_log(name))
            self._publish(name, Snapshot(model, flavor.new_metrics(), 0, self._next_generation(), flavor.name))

    def replace(self, name: str, model: Any) -> None:
        """Replace the stored model, keeping its flavor, metrics and stats."""
        with self._changing(name):
            replica = self.replica(name)
            replica.flavor.check(model)
            with replica.lock:
                state = Snapshot(model, replica.metrics, replica.seq, self._next_generation(), replica.flavor.name)
                self._publish(name, state)

    def delete(self, name: str) -> bool:
        """Delete the model and its log; False when there was none."""
        with self._changing(name):
            # The model key goes first: from then on every request answers 404.
            existed = self.backend.delete(meta_key(name)) > 0
            self.backend.delete(_snapshot_key(name), _snapseq_key(name))
            self.backend.delete_log(_log(name))
        with self._mutex:
            self._replicas.pop(name, None)
        return existed

    def copy_model(self, name: str) -> Any:
        """A deep copy of the model as it is now: changing it changes nothing stored."""
        replica = self.replica(name)
        with replica.lock, model_code("The model could not be copied"):
            return copy.deepcopy(replica.model)

    def current_metrics(self, name: str) -> dict[str, Any]:
        """The metrics of this process's replica as they are, without asking the store."""
        replica = self._held(name)
        if replica is None or replica.generation is None:
            return {}
        with replica.lock:
            return metric_values(replica.metrics)

    def _next_generation(self) -> str:
        # One counter and identity for the whole store, read and moved in one atomic step (so
        # a store emptied in between cannot pair an old identity with a new count): a deleted
        # and re-created name never reuses a generation, nor does a store that lost its data.
        return self.backend.update(_GENERATION_KEY, _next_generation).decode()

    def _publish(self, name: str, state: Snapshot) -> None:
        # The snapshot is written before the model key, so whoever sees the new generation
        # finds its snapshot.
        self.backend.set(_snapshot_key(name), self.codec.dumps(state))
        self.backend.set(_snapseq_key(name), str(state.seq).encode())
        self.backend.set(meta_key(name), _meta(state.flavor, state.generation))

    # --- replicas ------------------------------------------------------------------------------

    def replica(self, name: str) -> Replica:
        """This process's replica of ``name``, up to date with the log."""
        replica = self._held(name)
        # The model key and the log tail in one round trip: most requests need nothing more.
        raw, tail = self.backend.peek(meta_key(name), _log(name), 0 if replica is None else replica.seq)
        records: list[tuple[int, bytes]] | None = tail
        if raw is None:
            with self._mutex:
                self._replicas.pop(name, None)
            raise ModelNotFound(name)
        if replica is None or replica.generation != json.loads(raw)["generation"]:
            replica, records = self._load(name), None
        self._catch_up(name, replica, records)
        return replica

    def _held(self, name: str) -> Replica | None:
        """This process's replica of ``name`` as it is, if it has one."""
        with self._mutex:
            return self._replicas.get(name)

    def _snapshot(self, name: str) -> Snapshot:
        blob = self.backend.get(_snapshot_key(name))
        if blob is None:
            raise ModelNotFound(name)
        # The snapshot carries its flavor: the model key may already describe a newer model.
        state: Snapshot = self.codec.loads(blob)
        return state

    def _load(self, name: str) -> Replica:
        state = self._snapshot(name)
        replica = Replica(
            get_flavor(state.flavor),
            state.model,
            state.metrics,
            state.seq,
            state.generation,
            state.seq,
            dict(state.skipped),
        )
        with self._mutex:
            current = self._replicas.get(name)
            # Another thread may have loaded the same generation meanwhile: one replica each.
            if current is not None and current.generation == replica.generation:
                return current
            self._replicas[name] = replica
        return replica

    def _catch_up(self, name: str, replica: Replica, records: list[tuple[int, bytes]] | None = None) -> None:
        """Apply every log record after the replica's position, in order.

        ``records`` is a log tail read before the replica's lock was taken, if any: what
        another thread applied meanwhile is dropped from it. A record that raises may have
        changed the model halfway: the replica is rebuilt from the snapshot and the log
        without it (:meth:`_rebuild`), as every replica that applies it does; its failure is
        kept in ``replica.skipped`` for the thread that sent it.
        """
        with replica.lock:
            while not self._apply_all(replica, self._unapplied(name, replica, records)):
                self._rebuild(name, replica)
                records = None

    def _unapplied(self, name: str, replica: Replica, records: Records | None) -> Records:
        """The log records after the replica's position, from ``records`` if they continue it,
        else read from the store; the replica reloaded if the log was trimmed past it."""
        if records is not None:
            records = [record for record in records if record[0] > replica.seq]
        if records is None or (records and records[0][0] != replica.seq + 1):
            records = self.backend.read(_log(name), replica.seq)
        reloads = 0
        while records and records[0][0] != replica.seq + 1:
            # The log was trimmed past this replica by a snapshot: start from that snapshot.
            # Again if another snapshot trimmed further while this one was being read.
            if reloads == _RELOADS:
                # A log that does not continue its snapshot (a store restored in part):
                # answering beats reloading forever.
                raise Busy(f"The log of model '{name}' does not continue from its snapshot yet; try again.")
            self._reload(name, replica)
            records = self.backend.read(_log(name), replica.seq)
            reloads += 1
        return records

    def _apply_all(self, replica: Replica, records: Records) -> bool:
        """Apply ``records`` in order, past those that failed before; False, the replica left
        at the record before, when one fails."""
        for seq, blob in records:
            if seq not in replica.skipped:
                try:
                    # A record that cannot be loaded is skipped too, rather than blocking the log.
                    x, y, value, label, proba = self.codec.loads(blob)
                    self._apply(replica, x, y, Scored(value, label, proba))
                except (ModelFailed, TamperedData) as error:
                    replica.skipped[seq] = error.message
                    return False
            replica.seq = seq
        return True

    def _rebuild(self, name: str, replica: Replica) -> None:
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
        state = self._snapshot(name)
        # Failures of this generation after the replica's last snapshot stay, for the replay
        # to skip (those before the new snapshot only for their senders to read).
        kept = {}
        if state.generation == replica.generation:
            kept = {seq: error for seq, error in replica.skipped.items() if seq > replica.snapshot_seq}
        replica.flavor = get_flavor(state.flavor)
        replica.model, replica.metrics = state.model, state.metrics
        replica.seq = replica.snapshot_seq = state.seq
        replica.generation = state.generation
        replica.skipped = {**dict(state.skipped), **kept}

    @staticmethod
    def _apply(replica: Replica, x: dict, y: Any, scored: Scored) -> None:
        """Learn one record; :class:`ModelFailed` when the model or a metric raises."""
        try:
            with model_code(_LEARN_FAILED):
                if y is None:
                    replica.model.learn_one(dict(x))
                    return
                replica.model.learn_one(dict(x), y)
                replica.flavor.score(replica.metrics, y, scored)
        except INTERPRETER_EXITS:
            # The worker is stopping halfway into the model: its exit snapshot must not save it.
            replica.discard()
            raise

    # --- requests: O(features), never O(model) -------------------------------------------------

    def predict(self, name: str, x: dict, writes: Callable[[Scored], Writes]) -> Scored:
        """The model's prediction for ``x``; ``writes(prediction)``, what the caller keeps of
        it, are made in the same atomic step as the check that the model was, at that moment,
        exactly the one that predicted (see :meth:`_guarded`)."""

        def write(scored: Scored, guard: Guard) -> tuple[bool, Records]:
            return self.backend.write(writes(scored), guard)

        def decide(replica: Replica) -> Scored:
            replica.check_sample(x)
            return self._predict(replica, x)

        return self._guarded(name, decide, write)[1]

    @staticmethod
    def _predict(replica: Replica, x: dict) -> Scored:
        with replica.lock:
            return replica.flavor.predict(replica.model, dict(x))

    def learn(self, name: str, x: dict, y: Any, prediction: Any = None, scored: Scored | None = None) -> Scored | None:
        """Make the model learn ``x`` (and ``y``, unless None) durably; the prediction scored.

        ``prediction`` is one the caller made; ``scored`` one this server made and stored.
        With a ground truth and neither, the model predicts first, so the metrics are
        prequential; a model that cannot predict yet still learns, and the metrics skip the
        sample. The record is appended with a compare-and-append (:meth:`_guarded`): when
        nobody wrote in between, the prediction kept for the metrics is the one the model
        makes at the record's place in the log; a learn racing others keeps one made after
        it caught up with them.

        Once the record is appended the learn has succeeded, whatever happens to the steps
        after it (applying records of others, the snapshot): those are made again by later
        requests. Only the record's own failure, which every replica skips, is an error:
        :class:`ModelFailed`, and the record counts as never stored.
        """

        def decide(replica: Replica) -> tuple[bytes, Scored | None]:
            replica.check_sample(x)
            replica.flavor.check_target(y)
            made = scored
            if made is None and prediction is not None:
                made = replica.flavor.from_value(prediction)
            if made is None and y is not None:
                with contextlib.suppress(ModelFailed):
                    made = self._predict(replica, x)
            parts = (None, None, None) if made is None else (made.value, made.label, made.proba)
            return self.codec.dumps((x, y, *parts)), made

        def append(decision: tuple[bytes, Scored | None], guard: Guard) -> tuple[int | None, Records]:
            return self.backend.append_at(decision[0], guard)

        replica, (_, made), seq = self._guarded(name, decide, append)
        try:
            self._applied(name, replica, seq, x, y, made)
        except INTERPRETER_EXITS:
            raise
        except BaseException as error:  # noqa: BLE001 - the record is stored: the learn stands
            logger.warning(
                "Model %r: record %d is stored; applying it waits for a later request (%s).", name, seq, describe(error)
            )
        # The record's own failure, found by this thread or by whichever applied it first.
        failure = replica.skipped.get(seq)
        if failure is not None or replica.seq - replica.snapshot_seq >= self.snapshot_every:
            # After a failure too: the rebuild's snapshot spares the next one its replay.
            self._try_snapshot(name, replica)
        if failure is not None:
            raise ModelFailed(failure)
        return made

    def _applied(self, name: str, replica: Replica, seq: int, x: dict, y: Any, made: Scored | None) -> None:
        """Bring the replica to record ``seq``, just appended, and past it."""
        with replica.lock:
            if seq == replica.seq + 1:
                # Nobody wrote in between: apply the record from memory rather than read it back.
                try:
                    self._apply(replica, x, y, made or Scored(None))
                    replica.seq = seq
                except ModelFailed as error:
                    replica.skipped[seq] = error.message
                    self._rebuild(name, replica)
            self._catch_up(name, replica)

    def _guarded(
        self,
        name: str,
        decide: Callable[[Replica], _Decision],
        write: Callable[[_Decision, Guard], tuple[_Written | None, Records]],
    ) -> tuple[Replica, _Decision, _Written]:
        """Decide on this process's replica, then write guarded by the model entry it was
        decided on; the replica, the decision written and what ``write`` said.

        No read of the store comes first. The first write is also guarded by the log position
        the replica is at, so when nobody else wrote a request costs one write. When that
        guard fails, nothing was written: the replica applies the records it had not seen (or
        reloads, if the model was replaced; :class:`ModelNotFound` if deleted) and decides
        again. It is then at least as new as the log was after the request arrived, which is
        all a request needs, so later writes check only that the model is still the same:
        racing writers never make each other wait for long. A decision refused by a replica
        not checked against the store is made again on a fresh one before it is believed.
        """
        held = self._held(name)
        replica, fresh = (self.replica(name), True) if held is None else (held, False)
        for attempt in range(_GUARDED_TRIES):
            try:
                with replica.lock:
                    decision = decide(replica)
                    meta = _meta(replica.flavor.name, replica.generation)
                    guard = Guard(_log(name), None if attempt else replica.seq, meta_key(name), meta)
            except (InvalidInput, ModelFailed):
                if fresh:
                    raise
                replica, fresh = self.replica(name), True
                continue
            written, unseen = write(decision, guard)
            if written:
                return replica, decision, written
            if unseen:
                self._catch_up(name, replica, unseen)
            else:
                replica = self._refreshed(name, replica, attempt)
            fresh = True
        raise Busy(f"Model '{name}' was replaced while this request was answered; try again shortly.")

    def _refreshed(self, name: str, replica: Replica, attempt: int) -> Replica:
        """The replica to decide on after a guarded write found nothing new in the log.

        Either the model entry changed (the replica reloads) or, on the first try, the log
        ends before the replica: the store lost records it had applied (restored from an
        older copy). That replica no longer matches the store and starts again from it.
        """
        generation, seq = replica.generation, replica.seq
        fresh = self.replica(name)
        if attempt == 0 and fresh is replica and replica.generation == generation and replica.seq == seq:
            logger.warning("Model %r: the log ends before record %d, which this process applied; reloading.", name, seq)
            replica.discard()
            fresh = self.replica(name)
        return fresh

    # --- snapshots -----------------------------------------------------------------------------

    def snapshot(self, name: str, replica: Replica, wait: bool = True) -> None:
        """Fold the replica's state into the snapshot and trim the log before it.

        Without ``wait``, a snapshot already being written elsewhere is left to finish and
        this one is skipped: the next learn tries again. The snapshot is written only if the
        model entry is still the replica's generation (in the same atomic step), and only if
        the log still holds the last record the replica applied: a replica of another model,
        of a store that lost its data, or discarded, never overwrites the stored snapshot.
        """
        try:
            with self.backend.lock(_lock(name), timeout=30.0 if wait else 0.0), replica.lock:
                if replica.generation is None:
                    return
                meta = _meta(replica.flavor.name, replica.generation)
                if self.backend.get(meta_key(name)) != meta:
                    return
                stored_seq = int(self.backend.get(_snapseq_key(name)) or b"0")
                if replica.seq > stored_seq:
                    if not self._log_holds(name, replica):
                        return
                    previous = tuple(
                        (seq, error) for seq, error in replica.skipped.items() if seq > replica.snapshot_seq
                    )
                    state = Snapshot(
                        replica.model, replica.metrics, replica.seq, replica.generation, replica.flavor.name, previous
                    )
                    writes = Writes(
                        sets=[
                            (_snapshot_key(name), self.codec.dumps(state), None),
                            (_snapseq_key(name), str(replica.seq).encode(), None),
                        ]
                    )
                    if not self.backend.write(writes, Guard(_log(name), None, meta_key(name), meta))[0]:
                        return
                    # The snapshot's own record stays: a replica behind it sees the gap.
                    self.backend.trim(_log(name), replica.seq)
                # Failures of records sent by other processes are never collected here; those
                # older than the previous snapshot have had a whole interval to be.
                previous_seq, replica.snapshot_seq = replica.snapshot_seq, max(stored_seq, replica.seq)
                replica.skipped = {seq: e for seq, e in replica.skipped.items() if seq > previous_seq}
        except TimeoutError:
            if wait:
                raise

    def _log_holds(self, name: str, replica: Replica) -> bool:
        """Whether the log still holds the last record the replica applied (a snapshot keeps
        its own record); a replica past the end of the log is discarded."""
        records = self.backend.read(_log(name), replica.seq - 1)
        if records and records[0][0] == replica.seq:
            return True
        logger.warning(
            "Model %r: the log lost record %d, which this process applied; its replica is dropped.", name, replica.seq
        )
        replica.discard()
        return False

    def _try_snapshot(self, name: str, replica: Replica) -> None:
        """:meth:`snapshot` without waiting, for a request that has already succeeded: a
        snapshot that fails (the store, the model's pickling) is tried again later."""
        try:
            self.snapshot(name, replica, wait=False)
        except INTERPRETER_EXITS:
            raise
        except BaseException as error:  # noqa: BLE001 - the log holds everything; a snapshot can wait
            logger.warning("Model %r: the snapshot failed and is tried again later (%s).", name, describe(error))

    def close(self) -> None:
        """Snapshot every replica that applied records since its last snapshot (clean shutdown)."""
        with self._mutex:
            replicas = list(self._replicas.items())
        for name, replica in replicas:
            if replica.seq > replica.snapshot_seq:
                # Without waiting: the log is durable, a skipped snapshot only means a longer
                # replay, and a shutdown must not hang on a lock left by a killed process.
                self._try_snapshot(name, replica)

"""Snapshots: a model's state folded out of its log.

Every ``snapshot_every`` records the model, its metrics and its log position are pickled into
a *snapshot* and the log is trimmed up to it; recovery after a crash is the snapshot plus a
replay of the log. A snapshot is written only over the model it was taken of: a replica of
another generation, of a store that lost its data, or discarded, never overwrites it.
"""

from __future__ import annotations

import logging

from .. import layout
from ..errors import INTERPRETER_EXITS
from ..flavors import describe
from ..serialization import Codec
from ..storage import Backend
from ..storage.base import Change, Guard
from .entries import entry
from .replicas import Replica, Replicas, Snapshot

logger = logging.getLogger("flask_river_ml.engine")

#: How long a change of a model waits for another one to finish.
CHANGE_WAIT = 30.0


class Snapshots:
    """Writes the snapshots of one process's replicas."""

    def __init__(self, backend: Backend, codec: Codec, replicas: Replicas, every: int) -> None:
        self.backend = backend
        self.codec = codec
        self.replicas = replicas
        self.every = every

    def publish(self, name: str, state: Snapshot) -> None:
        """Store ``state`` as the model ``name``, a new generation (its change lock is held)."""
        # The snapshot is written before the model entry, so whoever sees the new generation
        # finds its snapshot.
        self.backend.set(layout.snapshot(name), self.codec.dumps(state))
        self.backend.set(layout.snapshot_seq(name), str(state.seq).encode())
        self.backend.set(layout.model(name), entry(state.flavor, state.generation))

    def due(self, replica: Replica) -> bool:
        """Whether the replica learnt enough samples since its last snapshot for another: one
        per record, and each sample of a batch record."""
        return replica.seq - replica.snapshot_seq + replica.extra_samples >= self.every

    def take(self, name: str, replica: Replica, wait: bool = True) -> None:
        """Fold the replica's state into the snapshot and trim the log before it.

        Without ``wait``, a snapshot already being written elsewhere is left to finish and
        this one is skipped: the next learn tries again. The snapshot is written only if the
        model entry is still the replica's generation (in the same atomic step), and only if
        the log still holds the last record the replica applied.
        """
        try:
            with self.backend.lock(layout.change_lock(name), timeout=CHANGE_WAIT if wait else 0.0), replica.lock:
                if replica.generation is None:
                    return
                current = entry(replica.flavor.name, replica.generation)
                if self.backend.get(layout.model(name)) != current:
                    return
                stored_seq = int(self.backend.get(layout.snapshot_seq(name)) or b"0")
                if replica.seq > stored_seq:
                    if not self._log_holds(name, replica):
                        return
                    change = Change(
                        sets=(
                            (layout.snapshot(name), self.codec.dumps(replica.state()), None),
                            (layout.snapshot_seq(name), str(replica.seq).encode(), None),
                        )
                    )
                    if not self.backend.commit(
                        change, Guard(layout.log(name), None, layout.model(name), current)
                    ).written:
                        return
                    # The snapshot's own record stays: a replica behind it sees the gap.
                    self.backend.trim(layout.log(name), replica.seq)
                    logger.info(
                        "Model %r: snapshot written at record %d; the log before it is trimmed.", name, replica.seq
                    )
                # Failures of records sent by other processes are never collected here; those
                # older than the previous snapshot have had a whole interval to be.
                previous_seq, replica.snapshot_seq = replica.snapshot_seq, max(stored_seq, replica.seq)
                replica.extra_samples = 0
                replica.skipped = {seq: e for seq, e in replica.skipped.items() if seq > previous_seq}
        except TimeoutError:
            if wait:
                raise

    def _log_holds(self, name: str, replica: Replica) -> bool:
        """Whether the log still holds the last record the replica applied (a snapshot keeps
        its own record); a replica past the end of the log is discarded."""
        records = self.backend.read(layout.log(name), replica.seq - 1)
        if records and records[0][0] == replica.seq:
            return True
        logger.warning(
            "Model %r: the log lost record %d, which this process applied; its replica is dropped.", name, replica.seq
        )
        replica.discard()
        return False

    def try_take(self, name: str, replica: Replica) -> None:
        """:meth:`take` without waiting, for a request that has already succeeded: a snapshot
        that fails (the store, the model's pickling) is tried again later."""
        try:
            self.take(name, replica, wait=False)
        except INTERPRETER_EXITS:
            raise
        except BaseException as error:  # noqa: BLE001 - the log holds everything; a snapshot can wait
            logger.warning("Model %r: the snapshot failed and is tried again later (%s).", name, describe(error))

    def close(self) -> None:
        """Snapshot every replica that applied records since its last snapshot (clean shutdown)."""
        for name, replica in self.replicas.all():
            if replica.seq > replica.snapshot_seq:
                # Without waiting: the log is durable, a skipped snapshot only means a longer
                # replay, and a shutdown must not hang on a lock left by a killed process.
                self.try_take(name, replica)

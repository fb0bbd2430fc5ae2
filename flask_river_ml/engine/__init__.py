"""The state engine: one consistent, durable model per name, at a per-request cost that does
not grow with the model.

A learn appends a small signed record (the sample as sent) to the model's log; the append is
what makes the learn durable. Each process keeps a replica of every model it serves and
applies the log to it in order, learning each record where it lands
(:mod:`~flask_river_ml.engine.replicas`); requests decide on the replica and commit in one
guarded step (:mod:`~flask_river_ml.engine.requests`); snapshots fold the log into the stored
model (:mod:`~flask_river_ml.engine.snapshots`). Upload, replace and delete change the model's
*generation* (:mod:`~flask_river_ml.engine.entries`); a replacement's snapshot is taken at the
head of the log, so a learn that races it is applied to the new model rather than lost. Where
each of these lives in the store is :mod:`flask_river_ml.layout`'s.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from .. import layout
from ..errors import Busy, ModelExists, ModelNotFound
from ..flavors import Flavor, Scored, get_flavor, metric_values, model_code
from ..serialization import Codec
from ..storage import Backend
from .batches import Batches, LearnedBatch
from .entries import next_generation, read_entry
from .replicas import Replica, Replicas, Snapshot
from .requests import Learn, Learned, Predict, Requests
from .snapshots import CHANGE_WAIT, Snapshots

logger = logging.getLogger("flask_river_ml.engine")


class Engine:
    """The models stored in one backend, as this process serves them."""

    def __init__(self, backend: Backend, codec: Codec, snapshot_every: int = 1000, waiting_ttl: float = 3600) -> None:
        self.backend = backend
        self.replicas = Replicas(backend, codec)
        self.snapshots = Snapshots(backend, codec, self.replicas, snapshot_every)
        self.requests = Requests(backend, codec, self.replicas, self.snapshots, waiting_ttl)
        self.batches = Batches(self.requests)

    # --- requests: O(features), never O(model) ---------------------------------------------

    def predict(self, name: str, request: Predict) -> Scored:
        """See :meth:`Requests.predict`."""
        return self.requests.predict(name, request)

    def learn(self, name: str, request: Learn) -> Learned:
        """See :meth:`Requests.learn`."""
        return self.requests.learn(name, request)

    def learn_batch(
        self, name: str, samples: Sequence[Learn], started: int | None = None, watch: bool = False
    ) -> LearnedBatch:
        """See :meth:`Batches.learn`."""
        return self.batches.learn(name, samples, started, watch)

    def predict_batch(self, name: str, samples: Sequence[Predict], started: int | None = None) -> list[Scored]:
        """See :meth:`Batches.predict`."""
        return self.batches.predict(name, samples, started)

    # --- what is stored, read without loading a model --------------------------------------

    def names(self) -> list[str]:
        """The names of every stored model, sorted."""
        return layout.model_names(self.backend.keys(layout.MODELS))

    def exists(self, name: str) -> bool:
        return self.backend.get(layout.model(name)) is not None

    def flavor(self, name: str) -> Flavor:
        """The flavor the model is served as; :class:`ModelNotFound` if there is none."""
        return get_flavor(read_entry(self.backend, name)["flavor"])

    def timings(self, name: str) -> dict[str, tuple[int, int, float] | None]:
        """``{kind: (count, total, weighted mean)}`` of the model's calls; :class:`ModelNotFound`
        if there is none."""
        read_entry(self.backend, name)
        return {kind: self.backend.observed(layout.timings(name, kind)) for kind in layout.TIMED}

    def held_metrics(self, name: str) -> dict[str, Any] | None:
        """The metrics of this process's replica as they are, without asking the store; None
        when this process holds none."""
        replica = self.replicas.held(name)
        if replica is None or replica.generation is None:
            return None
        with replica.lock:
            return metric_values(replica.metrics)

    # --- the model itself, up to date with the log -----------------------------------------

    def metrics(self, name: str) -> dict[str, Any]:
        """``{MetricName: value}`` of the model, up to date."""
        replica = self.replicas.get(name)
        with replica.lock:
            return metric_values(replica.metrics)

    def read_model(self, name: str, what: str, read: Any) -> Any:
        """``read(model)`` on the up-to-date model, guarded as model code (``what`` names the
        failure): its pickle, its parameters, a copy."""
        replica = self.replicas.get(name)
        with replica.lock, model_code(what):
            return read(replica.model)

    def copy_model(self, name: str) -> Any:
        """A deep copy of the model as it is now: changing it changes nothing stored."""
        return self.read_model(name, "The model could not be copied", copy.deepcopy)

    # --- models as a whole: these hold the model's change lock and pay for (un)pickling -------

    @contextlib.contextmanager
    def _changing(self, name: str) -> Iterator[None]:
        try:
            with self.backend.lock(layout.change_lock(name), timeout=CHANGE_WAIT):
                yield
        except TimeoutError:
            raise Busy(f"Another change of model '{name}' is in progress; try again shortly.") from None

    def create(self, name: str, model: Any, flavor: Flavor) -> None:
        """Store a new model; :class:`ModelExists` if the name is taken."""
        with self._changing(name):
            if self.exists(name):
                raise ModelExists(f"A model named '{name}' exists already; delete it first.")
            # A log left by a model deleted halfway (a crash) must not be replayed into this one.
            self.backend.delete_log(layout.log(name))
            state = Snapshot(model, flavor.new_metrics(), 0, next_generation(self.backend), flavor.name)
            self.snapshots.publish(name, state)
        logger.info("Model %r created, served as %s.", name, flavor.name)

    def replace(self, name: str, model: Any) -> None:
        """Replace the stored model, keeping its flavor, metrics and stats."""
        with self._changing(name):
            replica = self.replicas.get(name)
            replica.flavor.check(model)
            with replica.lock:
                generation = next_generation(self.backend)
                state = Snapshot(model, replica.metrics, replica.seq, generation, replica.flavor.name)
                self.snapshots.publish(name, state)
        logger.info("Model %r replaced at record %d; its metrics and stats are kept.", name, state.seq)

    def delete(self, name: str) -> bool:
        """Delete the model, its log, stats and waiting predictions; False when there was none."""
        with self._changing(name):
            # The model entry goes first: from then on every request answers 404.
            existed = self.backend.delete(layout.model(name)) > 0
            self.backend.delete(*layout.model_keys(name), *self.backend.keys(layout.waiting(name)))
            self.backend.delete_log(layout.log(name))
        self.replicas.drop(name)
        if existed:
            logger.info("Model %r deleted.", name)
        return existed

    def close(self) -> None:
        """Snapshot every replica that applied records since its last snapshot (clean shutdown)."""
        self.snapshots.close()


__all__ = ["Engine", "Learn", "Learned", "LearnedBatch", "Predict", "Replica", "Snapshot", "ModelNotFound"]

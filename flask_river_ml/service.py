"""The operations behind every route and every in-process call, with no Flask in sight.

The service validates what it is given, starts the clock of learn and predict calls, hands
the engine what each request wants done, and announces it to the streams; the models, their
store and its keys are the engine's.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterable
from typing import Any

import dill

from . import samples as batch_samples
from . import stats
from .encoding import model_params
from .engine import Engine, Learn, Learned, Predict
from .errors import InvalidInput, ModelExists, ModelFailed, ModelNotFound, UnsafePickle
from .events import Events
from .flavors import Flavor, get_flavor, model_code
from .names import check_name, generate_name
from .payloads import check_features, check_identifier, check_values, new_identifier
from .spec import MAX_MODEL_BYTES, build
from .unpickle import safe_loads

logger = logging.getLogger(__name__)


class Service:
    """Models, learning, predicting, labelling, metrics and stats over one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        generate_identifiers: bool,
        unpickle_allowed_modules: list[str],
        upload_max_bytes: int,
        max_features: int,
        batch_max_samples: int = 1000,
    ) -> None:
        self.engine = engine
        self.events = Events(engine.backend)
        self.generate_identifiers = generate_identifiers
        self.unpickle_allowed_modules = unpickle_allowed_modules
        self.upload_max_bytes = upload_max_bytes
        self.max_features = max_features
        self.batch_max_samples = batch_max_samples

    # --- models ----------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The names of every stored model, sorted."""
        return self.engine.names()

    def add_model(self, model: Any, flavor: str, name: str | None = None) -> str:
        """Store ``model`` under ``name`` (generated when None) to be served as ``flavor``."""
        chosen = get_flavor(flavor)
        chosen.check(model)
        if name is None:
            name = generate_name(self.engine.exists)
        self.engine.create(check_name(name), model, chosen)
        return name

    def create(self, description: Any, flavor: str, name: str | None = None) -> str:
        """Build a model from its JSON description with river's constructors and store it;
        nothing is unpickled. The flavor and name are checked before anything is built."""
        chosen = self._check_new(flavor, name)
        # No larger than a pickle upload could be, nor than what a description may build.
        model = build(description, self.unpickle_allowed_modules, min(MAX_MODEL_BYTES, self.upload_max_bytes))
        return self.add_model(model, chosen.name, name)

    def upload(self, data: bytes, flavor: str, name: str | None = None) -> str:
        """Store an uploaded pickle; the flavor and name are checked before anything is loaded."""
        chosen = self._check_new(flavor, name)
        model = safe_loads(data, self.unpickle_allowed_modules, self.upload_max_bytes)
        # The server pickles the model again for its snapshots: that pickle must name nothing
        # outside the safe list either, whatever the upload's objects do when pickled.
        try:
            with model_code("The uploaded model cannot be pickled"):
                again = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
            safe_loads(again, self.unpickle_allowed_modules)
        except (ModelFailed, UnsafePickle) as error:
            raise UnsafePickle(f"The uploaded model does not pickle back to the safe list: {error.message}") from None
        return self.add_model(model, chosen.name, name)

    def _check_new(self, flavor: str, name: str | None) -> Flavor:
        """The flavor of a model about to be added under ``name``, once both are known good."""
        chosen = get_flavor(flavor)
        if name is not None:
            check_name(name)
            if self.engine.exists(name):
                raise ModelExists(f"A model named '{name}' exists already; delete it first.")
        return chosen

    def download(self, name: str) -> bytes:
        """A dill pickle of the model, what riverapi's download_model saves."""
        return self.engine.read_model(check_name(name), "The model could not be pickled", dill.dumps)

    def params(self, name: str) -> dict[str, Any]:
        """The model's parameters as JSON."""
        return self.engine.read_model(check_name(name), "The model's parameters could not be read", model_params)

    def delete_model(self, name: str) -> bool:
        """Delete the model, its stats and its waiting predictions; False when there was none."""
        return self.engine.delete(check_name(name))

    def get_model(self, name: str) -> Any:
        """A copy of the model: changing it changes nothing stored."""
        return self.engine.copy_model(check_name(name))

    def save_model(self, model: Any, name: str) -> None:
        """Replace the stored model ``name`` by ``model``, keeping its flavor, metrics and stats."""
        self.engine.replace(check_name(name), model)

    def flavor(self, name: str) -> str:
        """The flavor the model is served as."""
        return self.engine.flavor(check_name(name)).name

    # --- metrics and stats -----------------------------------------------------------------------

    def metrics(self, name: str) -> dict[str, Any]:
        """``{MetricName: value}`` for the model; ``{}`` for a flavor without metrics."""
        return self.engine.metrics(check_name(name))

    def stats(self, name: str) -> dict[str, dict[str, Any]]:
        """Counts and durations of the model's learn and predict calls, from every process."""
        return stats.render(self.engine.timings(check_name(name)))

    def overview(self) -> list[dict[str, Any]]:
        """Every model with its flavor, stats and metrics (the dashboard's table), read without
        loading a model: the metrics are this process's replica's, None where it holds none
        (the dashboard's stream brings them with the model's next learn)."""
        found = []
        for name in self.models():
            try:
                flavor, stats_ = self.flavor(name), self.stats(name)
            except ModelNotFound:
                continue  # deleted meanwhile
            found.append({"name": name, "flavor": flavor, "stats": stats_, "metrics": self.engine.held_metrics(name)})
        return found

    # --- learning and predicting -----------------------------------------------------------------

    def learn(
        self,
        name: str,
        ground_truth: Any = None,
        prediction: Any = None,
        features: Any = None,
        identifier: Any = None,
    ) -> str:
        """Make the model learn one sample.

        With ``identifier``, the features and prediction stored by an earlier predict are used
        and that record is consumed. A ``ground_truth`` of None means an unsupervised learn.
        A classifier's ground truth or prediction given as the string JSON makes of one of its
        classes (``"true"``, ``"1"``) is learnt and scored as that class.
        """
        started = time.perf_counter_ns()
        check_name(name)
        check_values(ground_truth, "ground_truth")
        check_values(prediction, "prediction")
        if identifier is not None:
            request = Learn(ground_truth, identifier=check_identifier(identifier), started=started)
        else:
            request = Learn(ground_truth, check_features(features, self.max_features), None, prediction, started)
        self._announce("learn", name, self.engine.learn(name, request))
        return "Successful learn."

    def predict(self, features: Any, name: str, identifier: Any = None) -> dict[str, Any]:
        """The model's prediction; stored under an identifier (given or generated) for a label."""
        started = time.perf_counter_ns()
        features = check_features(features, self.max_features)
        check_name(name)
        generated = identifier is None and self.generate_identifiers
        if generated:
            identifier = new_identifier()
        elif identifier is not None:
            identifier = check_identifier(identifier)
        scored = self.engine.predict(name, Predict(features, identifier, started, generated))
        result: dict[str, Any] = {"model": name, "prediction": scored.value}
        if identifier is not None:
            result["identifier"] = identifier
        self._announce("predict", name, Learned(features, scored))
        return result

    def label(self, label: Any, identifier: Any, name: str) -> str:
        """Learn from the prediction stored under ``identifier`` with its true ``label`` (for a
        classifier, the string form of a class it knows is that class)."""
        check_name(name)
        if label is None:
            raise InvalidInput("label is required: the true value of the prediction.")
        check_values(label, "label")
        self._announce("label", name, self.engine.learn(name, Learn(label, identifier=check_identifier(identifier))))
        return "Successful label."

    # --- batches ---------------------------------------------------------------------------------

    def learn_batch(self, name: str, samples: Iterable[Any]) -> int:
        """Make the model learn every sample, in order, as as many calls of :meth:`learn` would
        (the same model, metrics, stats and events), in one durable write; how many it learnt.

        ``samples`` are ``(features, ground_truth)`` pairs (a river stream) or dictionaries of
        ``features``, ``ground_truth``, ``prediction`` and ``identifier``, at most
        RIVER_ML_BATCH_MAX_SAMPLES (:class:`TooLarge`). The batch is checked whole first: a
        sample refused refuses it, its error names the sample, and nothing is learnt.
        """
        started = time.perf_counter_ns()
        check_name(name)
        requests = batch_samples.learn_requests(samples, self.batch_max_samples, self.max_features)
        learned = self.engine.learn_batch(name, requests, started, watch=self.events.wanted())
        for sample, metrics in learned.watched:
            self._publish("learn", name, sample, metrics)
        return learned.count

    def predict_batch(
        self, features: Iterable[Any], name: str, identifiers: Iterable[Any] | None = None
    ) -> dict[str, Any]:
        """``{"model", "predictions", "identifiers"}``: the model's prediction for each sample
        (a feature dictionary, or a ``(features, ground_truth)`` pair), as as many calls of
        :meth:`predict` would give, each kept for a label under its identifier (given, or
        generated as :meth:`predict` does; None where none is kept)."""
        started = time.perf_counter_ns()
        check_name(name)
        requests = batch_samples.predict_requests(
            features, identifiers, self.batch_max_samples, self.max_features, self.generate_identifiers
        )
        predictions = self.engine.predict_batch(name, requests, started)
        if self.events.wanted():
            for request, scored in zip(requests, predictions, strict=True):
                self._publish("predict", name, Learned(request.features, scored))
        return {
            "model": name,
            "predictions": [scored.value for scored in predictions],
            "identifiers": [request.identifier for request in requests],
        }

    def _announce(self, event: str, name: str, learned: Learned) -> None:
        """Publish the event (and the metrics it moved) to the streams, if any listen; the
        ground truth as the model learnt it."""
        if not self.events.wanted():
            return
        self._publish(event, name, learned, None if event == "predict" else self.engine.held_metrics(name) or {})

    def _publish(self, event: str, name: str, learned: Learned, metrics: dict[str, Any] | None = None) -> None:
        """Publish one event, with the metrics after it (none for a predict)."""
        scored = learned.scored
        data = {"model": name, "features": learned.features, "prediction": None if scored is None else scored.value}
        if event == "predict":
            self.events.publish(event, data)
        else:
            self.events.publish(event, {**data, "ground_truth": learned.ground_truth}, metrics)

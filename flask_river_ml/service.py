"""The operations behind every route and every in-process call, with no Flask in sight.

The service validates what it is given, starts the clock of learn and predict calls, hands
the engine what each request wants done, and announces it to the streams; the models, their
store and its keys are the engine's.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from typing import Any

import dill

from . import stats
from .encoding import model_params
from .engine import Engine, Learn, Learned, Predict
from .errors import InvalidInput, ModelExists, ModelFailed, ModelNotFound, UnsafePickle
from .events import Events
from .flavors import Flavor, get_flavor, model_code
from .names import check_name, generate_name
from .payloads import check_values
from .spec import MAX_MODEL_BYTES, build
from .unpickle import safe_loads

_MAX_IDENTIFIER = 256
logger = logging.getLogger(__name__)


def _check_features(features: Any, max_features: int) -> dict:
    if not isinstance(features, dict):
        raise InvalidInput(f"features must be a dictionary of feature names to values, not {features!r}.")
    if len(features) > max_features:
        # A model's cost per sample may grow with the square of its features (a covariance,
        # BayesianLinearRegression's) or faster (polynomial features): bounded per request.
        raise InvalidInput(
            f"features holds {len(features)} features, more than {max_features} (RIVER_ML_MAX_FEATURES)."
        )
    check_values(features, "features")
    return features


def _check_identifier(identifier: Any) -> str:
    # Clients that number their samples send integers; they address the same record as strings.
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        identifier = str(identifier)
    if not isinstance(identifier, str) or not 0 < len(identifier) <= _MAX_IDENTIFIER:
        raise InvalidInput(f"identifier must be a string of 1 to {_MAX_IDENTIFIER} characters, not {identifier!r}.")
    return identifier


def _new_identifier() -> str:
    """A random UUID, version 4, written as ``str(uuid.uuid4())`` writes one: every predict
    makes one, and this takes half the time of building a UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


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
    ) -> None:
        self.engine = engine
        self.events = Events(engine.backend)
        self.generate_identifiers = generate_identifiers
        self.unpickle_allowed_modules = unpickle_allowed_modules
        self.upload_max_bytes = upload_max_bytes
        self.max_features = max_features

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
            request = Learn(ground_truth, identifier=_check_identifier(identifier), started=started)
        else:
            request = Learn(ground_truth, _check_features(features, self.max_features), None, prediction, started)
        self._announce("learn", name, self.engine.learn(name, request))
        return "Successful learn."

    def predict(self, features: Any, name: str, identifier: Any = None) -> dict[str, Any]:
        """The model's prediction; stored under an identifier (given or generated) for a label."""
        started = time.perf_counter_ns()
        features = _check_features(features, self.max_features)
        check_name(name)
        generated = identifier is None and self.generate_identifiers
        if generated:
            identifier = _new_identifier()
        elif identifier is not None:
            identifier = _check_identifier(identifier)
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
        self._announce("label", name, self.engine.learn(name, Learn(label, identifier=_check_identifier(identifier))))
        return "Successful label."

    def _announce(self, event: str, name: str, learned: Learned) -> None:
        """Publish the event (and the metrics it moved) to the streams, if any listen; the
        ground truth as the model learnt it."""
        if not self.events.wanted():
            return
        scored = learned.scored
        data = {"model": name, "features": learned.features, "prediction": None if scored is None else scored.value}
        if event == "predict":
            self.events.publish(event, data)
        else:
            self.events.publish(
                event, {**data, "ground_truth": learned.ground_truth}, self.engine.held_metrics(name) or {}
            )

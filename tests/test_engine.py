"""The engine and the service at their seam: built on the memory store, without a Flask app.

What a request wants done goes in as data (:class:`Predict`, :class:`Learn`) and is committed
in one guarded step: a waiting prediction is consumed exactly when the learn made from it is
written, and kept on every failure. Reading what is stored (names, flavors, timings) loads
no model.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from river import base, linear_model

from flask_river_ml import layout
from flask_river_ml.engine import Engine, Learn, Predict
from flask_river_ml.errors import (
    Busy,
    IdentifierExists,
    IdentifierNotFound,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    StoreUnavailable,
)
from flask_river_ml.flavors import get_flavor
from flask_river_ml.serialization import Codec
from flask_river_ml.service import Service
from flask_river_ml.storage.base import Outcome
from flask_river_ml.storage.memory import MemoryBackend


class Picky(base.Regressor):
    """Predicts how many samples it learned; refuses (raises on) a negative ground truth."""

    def __init__(self) -> None:
        self.seen = 0

    def learn_one(self, x: dict, y: float) -> None:
        if y < 0:
            raise ValueError("a negative ground truth")
        self.seen += 1

    def predict_one(self, x: dict) -> float:
        return float(self.seen)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


def make_engine(backend: MemoryBackend) -> Engine:
    """An engine on ``backend``, as one process of those sharing it would have."""
    return Engine(backend, Codec("k" * 64), snapshot_every=1000, waiting_ttl=60)


@pytest.fixture
def engine(backend) -> Iterator[Engine]:
    engine = make_engine(backend)
    engine.create("m", Picky(), get_flavor("regression"))
    yield engine
    engine.close()


def waiting(engine: Engine, identifier: str = "id") -> bytes | None:
    return engine.backend.get(layout.waiting("m", identifier))


def log_length(engine: Engine) -> int:
    return len(engine.backend.read(layout.log("m")))


def unavailable(*args: Any) -> Outcome:
    raise StoreUnavailable("The store cannot be reached.")


def never_holds(*args: Any) -> Outcome:
    return Outcome(False)  # the model entry changed on every try


@pytest.mark.parametrize(
    "failure, error",
    [
        ("model", ModelFailed),
        ("target", InvalidInput),
        ("store", StoreUnavailable),
        ("busy", Busy),
    ],
)
def test_a_waiting_prediction_survives_every_failed_label(engine, monkeypatch, failure, error):
    """A label that fails for any reason (the model refused the sample, a ground truth of the
    wrong type, a store away, a model replaced on every try) leaves the prediction waiting; the
    label that succeeds consumes it, once."""
    engine.predict("m", Predict({"x": 1.0}, "id"))
    stored = waiting(engine)
    with monkeypatch.context() as patch:
        if failure == "store":
            patch.setattr(engine.backend, "commit", unavailable)
        elif failure == "busy":
            patch.setattr(engine.backend, "commit", never_holds)
        with pytest.raises(error):
            engine.learn(
                "m", Learn(-1.0 if failure == "model" else "wrong" if failure == "target" else 1.0, identifier="id")
            )
    assert waiting(engine) == stored
    assert engine.copy_model("m").seen == 0
    learned = engine.learn("m", Learn(2.0, identifier="id"))
    assert learned.features == {"x": 1.0} and learned.scored is not None and learned.scored.value == 0.0
    assert waiting(engine) is None and engine.copy_model("m").seen == 1
    with pytest.raises(IdentifierNotFound):
        engine.learn("m", Learn(2.0, identifier="id"))
    # A failed record is in the log, skipped by every replica; the successful one once.
    assert log_length(engine) == (2 if failure == "model" else 1)


def test_concurrent_labels_of_one_prediction_learn_it_once(engine):
    engine.predict("m", Predict({"x": 1.0}, "id"))
    results: list[str] = []

    def label() -> None:
        try:
            engine.learn("m", Learn(1.0, identifier="id"))
            results.append("learned")
        except IdentifierNotFound:
            results.append("not found")

    threads = [threading.Thread(target=label) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["learned"] + ["not found"] * 7
    assert log_length(engine) == 1 and engine.copy_model("m").seen == 1


def test_concurrent_predictions_under_one_identifier_keep_the_first(engine):
    """Checked in the commit itself: of eight predictions under one identifier, one waits."""
    results: list[str] = []

    def predict(worker: int) -> None:
        try:
            engine.predict("m", Predict({"worker": float(worker)}, "id"))
            results.append(str(worker))
        except IdentifierExists:
            results.append("exists")

    threads = [threading.Thread(target=predict, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = [result for result in results if result != "exists"]
    assert len(kept) == 1 and results.count("exists") == 7
    assert engine.learn("m", Learn(1.0, identifier="id")).features == {"worker": float(kept[0])}


def test_a_learn_from_a_waiting_prediction_of_a_deleted_model_is_not_found(engine):
    engine.predict("m", Predict({"x": 1.0}, "id"))
    engine.delete("m")
    with pytest.raises(ModelNotFound):
        engine.learn("m", Learn(1.0, identifier="id"))
    assert engine.backend.keys("") == [layout.GENERATION]


def test_what_is_stored_is_read_without_loading_a_model(backend, engine, monkeypatch):
    """Another process's engine lists the models, their flavors and timings, and the service
    draws the dashboard's table and the stats from them, without unpickling a snapshot."""
    engine.learn("m", Learn(1.0, {"x": 1.0}, started=0))
    engine.predict("m", Predict({"x": 1.0}, started=0))
    other = make_engine(backend)
    service = Service(
        other, generate_identifiers=False, unpickle_allowed_modules=[], upload_max_bytes=1, max_features=10
    )
    loads = []
    codec = other.replicas.codec
    monkeypatch.setattr(codec, "loads", lambda blob: loads.append(blob) or Codec.loads(codec, blob))
    assert other.names() == ["m"] and other.flavor("m").name == "regression"
    assert service.stats("m")["learn"]["n_calls"] == 1 and service.stats("m")["predict"]["n_calls"] == 1
    (row,) = service.overview()
    assert (row["name"], row["flavor"], row["metrics"]) == ("m", "regression", None)
    assert loads == []
    # The metrics themselves are the model's: reading them loads it.
    assert service.metrics("m") == engine.metrics("m") and loads


def test_the_engine_predicts_like_river(engine, backend):
    model = linear_model.LinearRegression()
    engine.create("linear", model.clone(), get_flavor("regression"))
    local = model.clone()
    for i in range(20):
        x, y = {"a": float(i), "b": float(i % 3)}, float(2 * i)
        engine.learn("linear", Learn(y, x))
        local.learn_one(x, y)
    x = {"a": 3.5, "b": 1.0}
    assert engine.predict("linear", Predict(x)).value == local.predict_one(x)
    assert make_engine(backend).predict("linear", Predict(x)).value == local.predict_one(x)


def test_the_engine_the_service_and_the_stores_import_without_flask():
    code = (
        "import sys\n"
        "import flask_river_ml.engine, flask_river_ml.service, flask_river_ml.layout\n"
        "import flask_river_ml.storage.memory, flask_river_ml.storage.shelve\n"
        "assert 'flask' not in sys.modules, sorted(m for m in sys.modules if m.startswith('flask'))\n"
        "import flask_river_ml\n"
        "assert flask_river_ml.FlaskRiverML.__name__ == 'FlaskRiverML' and 'flask' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

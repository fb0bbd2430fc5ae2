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
from stores import append

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


def counted_commits(backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch) -> list[Outcome]:
    """The outcomes of every commit made on ``backend`` from now on, by any engine."""
    commit, outcomes = backend.commit, []

    def counting(change: Any, guard: Any = None) -> Outcome:
        outcome = commit(change, guard)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(backend, "commit", counting)
    return outcomes


def test_learns_of_processes_behind_the_log_commit_once_and_are_scored_where_they_land(engine, backend, monkeypatch):
    """Three processes (engines on one store) take turns: from the second round on, each learn's
    replica is two records behind. Each learn is still one commit, never refused, whose answer
    carries the two records it missed; each sample is scored with the prediction of the model
    after exactly the records before it (Picky predicts how many it learnt: the i-th sample's
    prediction is i), and announces that prediction."""
    engines = [engine, make_engine(backend), make_engine(backend)]
    outcomes = counted_commits(backend, monkeypatch)
    for i in range(12):
        learned = engines[i % 3].learn("m", Learn(float(i), {"i": float(i)}))
        assert learned.scored is not None and learned.scored.value == float(i)
    assert [outcome.seq for outcome in outcomes] == list(range(1, 13))
    assert all(outcome.written for outcome in outcomes)
    assert [[seq for seq, _ in outcome.unseen] for outcome in outcomes[3:]] == [[s - 2, s - 1] for s in range(4, 13)]
    for each in engines:
        assert each.metrics("m")["MAE"] == 0.0
        assert each.copy_model("m").seen == 12
    assert engine.timings("m")["learn"] is None  # untimed calls: no timing written
    for each in engines[1:]:
        each.close()


def test_a_learn_behind_the_log_whose_record_fails_is_its_senders_error(engine, backend):
    """The sender applies the records it missed, then its own, which the model fails on:
    ModelFailed to it, and every replica, behind or not, skips the record."""
    other = make_engine(backend)
    engine.learn("m", Learn(1.0, {"x": 1.0}, started=0))
    other.learn("m", Learn(1.0, {"x": 2.0}, started=0))
    with pytest.raises(ModelFailed, match="a negative ground truth"):
        engine.learn("m", Learn(-1.0, {"x": 3.0}, started=0))
    assert engine.copy_model("m").seen == 2
    learned = other.learn("m", Learn(1.0, {"x": 4.0}, started=0))
    assert learned.scored is not None and learned.scored.value == 2.0
    assert engine.copy_model("m").seen == other.copy_model("m").seen == 3
    timing = engine.timings("m")["learn"]
    assert timing is not None and timing[0] == 3
    other.close()


def test_labels_of_one_prediction_sent_to_several_processes_learn_it_once(engine, backend):
    """Four processes, three of them behind the log, label one prediction at once: one label
    is learnt, the others are not found, and every replica learnt the prediction once."""
    engines = [engine, *(make_engine(backend) for _ in range(3))]
    for each in engines[1:]:
        each.learn("m", Learn(1.0, {"warm": 1.0}))
    engine.predict("m", Predict({"x": 1.0}, "id"))
    results: list[str] = []

    def label(each: Engine) -> None:
        for _ in range(2):
            try:
                each.learn("m", Learn(1.0, identifier="id"))
                results.append("learned")
            except IdentifierNotFound:
                results.append("not found")

    threads = [threading.Thread(target=label, args=(each,)) for each in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["learned"] + ["not found"] * 7
    assert log_length(engine) == 4
    for each in engines:
        assert each.copy_model("m").seen == 4
    for each in engines[1:]:
        each.close()


def test_records_written_before_learns_were_learnt_where_they_land_are_applied_as_written(engine, backend):
    """A log written by an earlier version: 5-tuples of the features, the ground truth read and
    the prediction made when the learn was decided (here 40.0, which the model never makes).
    Each is scored with its recorded prediction, and the learns after them where they land."""
    codec = engine.replicas.codec
    for i in range(3):
        append(backend, layout.log("m"), codec.dumps(({"i": float(i)}, 50.0, 40.0, 40.0, None)))
    learned = engine.learn("m", Learn(3.0, {"i": 3.0}))
    assert learned.scored is not None and learned.scored.value == 3.0
    assert engine.copy_model("m").seen == 4
    # Three errors of 10 from the recorded predictions, then none.
    assert engine.metrics("m")["MAE"] == pytest.approx(30.0 / 4)
    # A process that starts afresh replays the same log the same way.
    fresh = make_engine(backend)
    assert fresh.metrics("m") == engine.metrics("m")
    fresh.close()


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

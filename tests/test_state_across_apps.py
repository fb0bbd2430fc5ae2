"""The state engine seen through apps (the processes of one store): concurrency, durability,
snapshots, generations, failures. The engine alone, without Flask, is tests/test_engine.py."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from river import base, datasets, feature_extraction, linear_model, naive_bayes, preprocessing
from stores import append

from flask_river_ml import FlaskRiverML, IdentifierNotFound, ModelFailed, ModelNotFound, TamperedData, layout
from flask_river_ml.storage.base import Change, Guard

WORDS = "apple banana cherry date elder fig grape honey iris jade kiwi lime mango nut olive pear".split()


def text_samples(count: int, seed: int = 0) -> list[tuple[dict, str]]:
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(2, 8))
        label = "sweet" if words.count("honey") + words.count("mango") > words.count("lime") else "sour"
        samples.append(({"text": " ".join(words)}, label))
    return samples


def bag_model():
    return feature_extraction.BagOfWords(on="text") | naive_bayes.MultinomialNB()


def linear_model_pipeline():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def learn_in_threads(river_ml, name, chunks) -> list[Exception]:
    """Learn each ``(app, samples)`` of ``chunks`` on a thread of its own, all at once; the
    errors raised."""
    errors = []

    def work(app, samples):
        with app.app_context():
            for x, y in samples:
                try:
                    river_ml.learn(name, ground_truth=y, features=x)
                except Exception as error:  # noqa: BLE001 - collected for the caller to assert
                    errors.append(error)

    threads = [threading.Thread(target=work, args=chunk) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def assert_same_predictions(river_ml, name, local, xs, method="predict_one"):
    for x in xs:
        assert river_ml.predict(x, name)["prediction"] == pytest.approx(getattr(local, method)(x), abs=1e-9)


def test_threads_lose_no_learn(app, river_ml):
    """8 threads x 100 learns into one model: it has seen exactly the 800 samples."""
    name = river_ml.add_model(bag_model(), "multiclass")
    samples = text_samples(800)
    assert learn_in_threads(river_ml, name, [(app, samples[i::8]) for i in range(8)]) == []

    local = bag_model()
    for x, y in samples:
        local.learn_one(x, y)
    probe = [x for x, _ in text_samples(30, seed=1)]
    for x in probe:
        served = river_ml.predict(x, name)["prediction"]
        assert served == local.predict_one(x)
    # The model's counts are exactly the 800 samples, whatever order they arrived in.
    assert river_ml.get_model(name)["MultinomialNB"].class_counts == local["MultinomialNB"].class_counts
    assert river_ml.stats(name)["learn"]["n_calls"] == 800
    assert river_ml.stats(name)["predict"]["n_calls"] == len(probe)


LEARNER = """
import sys
from flask import Flask
from flask_river_ml import FlaskRiverML
from river import datasets

app = Flask("learner", instance_path=sys.argv[1])
app.config["RIVER_ML_SNAPSHOT_EVERY"] = 7
river_ml = FlaskRiverML(app)
with app.app_context():
    for i, (x, y) in enumerate(datasets.TrumpApproval()):
        river_ml.learn("trump", ground_truth=y, features=x)
        print(i + 1, flush=True)
"""


def test_sigkill_loses_no_acknowledged_learn(make_app, tmp_path):
    """A process killed with SIGKILL after N acknowledged learns: a new one has all N."""
    instance = tmp_path / "shared"
    first = make_app(instance_path=instance)
    with first.app_context():
        FlaskRiverML().add_model(linear_model_pipeline(), "regression", name="trump")

    script = tmp_path / "learner.py"
    script.write_text(LEARNER)
    with subprocess.Popen(
        [sys.executable, str(script), str(instance)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    ) as child:
        assert child.stdout is not None
        acknowledged = 0
        for line in child.stdout:
            acknowledged = int(line)
            if acknowledged >= 60:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Acknowledgements printed before the kill but not yet read.
        acknowledged = max([acknowledged, *(int(line) for line in child.stdout.read().split())])
    assert child.returncode == -signal.SIGKILL

    samples = list(datasets.TrumpApproval().take(acknowledged + 1))
    probe = [x for x, _ in datasets.TrumpApproval().take(10)]
    second = make_app(instance_path=instance)
    with second.app_context():
        served = [FlaskRiverML().predict(x, "trump")["prediction"] for x in probe]
    # Every acknowledged learn is there; the one in flight at the kill may be too.
    candidates = []
    for count in (acknowledged, acknowledged + 1):
        local = linear_model_pipeline()
        for x, y in samples[:count]:
            local.learn_one(x, y)
        candidates.append([local.predict_one(x) for x in probe])
    assert any(served == pytest.approx(candidate, abs=1e-9) for candidate in candidates)


def test_snapshot_trims_log_and_restores(make_app, tmp_path):
    """Snapshots every N records keep the log short; a new process restores the same model."""
    instance = tmp_path / "shared"
    first = make_app(instance_path=instance, RIVER_ML_SNAPSHOT_EVERY=10)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(35))
    local = linear_model_pipeline()
    with first.app_context():
        river_ml.add_model(linear_model_pipeline(), "regression", name="m")
        for x, y in samples:
            river_ml.learn("m", ground_truth=y, features=x)
            local.learn_one(x, y)
        backend = FlaskRiverML.state(first).backend
        assert len(backend.read(layout.log("m"))) <= 10
        metrics = river_ml.metrics("m")

    second = make_app(instance_path=instance, RIVER_ML_SNAPSHOT_EVERY=10)
    with second.app_context():
        assert_same_predictions(river_ml, "m", local, [x for x, _ in samples[:10]])
        assert river_ml.metrics("m") == pytest.approx(metrics, abs=1e-9)


def test_snapshots_while_learning_and_at_close(make_app, backend_name):
    """Every N records and at a clean shutdown the log is folded into the snapshot."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_SNAPSHOT_EVERY=8)
    river_ml = FlaskRiverML()
    with app.app_context():
        river_ml.add_model(linear_model_pipeline(), "regression", name="m")
        for x, y in datasets.TrumpApproval().take(20):
            river_ml.learn("m", ground_truth=y, features=x)
        state = FlaskRiverML.state(app)
        # Snapshots at 8 and 16; the log keeps the 16th record and those after it.
        assert [seq for seq, _ in state.backend.read(layout.log("m"))] == [16, 17, 18, 19, 20]
        assert state.backend.get(layout.snapshot_seq("m")) == b"16"
        state.engine.close()
        assert [seq for seq, _ in state.backend.read(layout.log("m"))] == [20]
        assert state.backend.get(layout.snapshot_seq("m")) == b"20"


def test_two_processes_stay_consistent(make_app, tmp_path):
    """Two apps on one store (two processes) interleave learns and agree with a local model."""
    instance = tmp_path / "shared"
    first = make_app(instance_path=instance, RIVER_ML_SNAPSHOT_EVERY=5)
    second = make_app(instance_path=instance, RIVER_ML_SNAPSHOT_EVERY=5)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(60))
    local = linear_model_pipeline()
    with first.app_context():
        river_ml.add_model(linear_model_pipeline(), "regression", name="m")
    for i, (x, y) in enumerate(samples):
        # The second app falls behind by more than a snapshot for a while: it must reload.
        target = first if i < 30 or i % 2 else second
        with target.app_context():
            river_ml.learn("m", ground_truth=y, features=x)
        local.learn_one(x, y)
    probe = [x for x, _ in samples[:10]]
    for app in (first, second):
        with app.app_context():
            assert_same_predictions(river_ml, "m", local, probe)
    with first.app_context():
        metrics = river_ml.metrics("m")
        assert river_ml.stats("m")["learn"]["n_calls"] == 60
    with second.app_context():
        assert river_ml.metrics("m") == metrics


def test_replace_and_delete_are_seen_by_other_processes(make_app, tmp_path):
    instance = tmp_path / "shared"
    first, second = make_app(instance_path=instance), make_app(instance_path=instance)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(20))
    with first.app_context():
        river_ml.add_model(linear_model_pipeline(), "regression", name="m")
        for x, y in samples:
            river_ml.learn("m", ground_truth=y, features=x)
    with second.app_context():
        before = river_ml.predict(samples[0][0], "m")["prediction"]
        assert before != 0.0
    with first.app_context():
        river_ml.save_model(linear_model_pipeline(), "m")
    with second.app_context():
        assert river_ml.predict(samples[0][0], "m")["prediction"] == 0.0
        # Records learnt after the replace apply to the new model.
        river_ml.learn("m", ground_truth=samples[0][1], features=samples[0][0])
    local = linear_model_pipeline()
    local.learn_one(*samples[0])
    with first.app_context():
        assert river_ml.predict(samples[1][0], "m")["prediction"] == pytest.approx(local.predict_one(samples[1][0]))
        assert river_ml.delete_model("m") is True
    with second.app_context():
        with pytest.raises(ModelNotFound):
            river_ml.predict(samples[0][0], "m")
        assert river_ml.models() == []


def test_tampered_snapshot_is_refused_not_unpickled(make_app, tmp_path):
    """A snapshot blob that fails its signature check is never unpickled."""
    instance = tmp_path / "shared"
    first = make_app(instance_path=instance)
    river_ml = FlaskRiverML()
    with first.app_context():
        river_ml.add_model(linear_model_pipeline(), "regression", name="m")
        backend = FlaskRiverML.state(first).backend
        marker = tmp_path / "pwned"
        payload = b"p" + pickle.dumps(_Exploit(str(marker)))
        backend.set(layout.snapshot("m"), b"\x00" * 32 + payload)
    second = make_app(instance_path=instance)
    with second.app_context(), pytest.raises(TamperedData):
        river_ml.predict({"x": 1}, "m")
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_model_failure_is_refused_and_state_kept(river_ml):
    """Features the model cannot use: ModelFailed, and the model is as it was."""
    name = river_ml.add_model(linear_model_pipeline(), "regression")
    samples = list(datasets.TrumpApproval().take(10))
    local = linear_model_pipeline()
    for x, y in samples:
        river_ml.learn(name, ground_truth=y, features=x)
        local.learn_one(x, y)
    timed = river_ml.stats(name)["learn"]
    with pytest.raises(ModelFailed):
        river_ml.learn(name, ground_truth=1.0, features={"ordinal_date": "not a number"})
    with pytest.raises(ModelFailed):
        # With a prediction supplied nothing predicts first: the learn itself fails.
        river_ml.learn(name, ground_truth=1.0, prediction=0.5, features={"ordinal_date": "not a number"})
    with pytest.raises(ModelFailed):
        river_ml.predict({"ordinal_date": "not a number"}, name)
    assert_same_predictions(river_ml, name, local, [x for x, _ in samples])
    # The failed learns were timed with their records, then taken back out of the stats.
    after = river_ml.stats(name)["learn"]
    assert (after["n_calls"], after["mean_duration"]) == (10, timed["mean_duration"])
    assert after["ewm_duration"] == pytest.approx(timed["ewm_duration"], abs=1)
    river_ml.learn(name, ground_truth=samples[0][1], features=samples[0][0])


def test_identifiers(make_app, backend_name):
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_IDENTIFIER_EXPIRES_SECONDS=1)
    river_ml = FlaskRiverML()
    x, y = next(iter(datasets.TrumpApproval()))
    with app.app_context():
        a = river_ml.add_model(linear_model_pipeline(), "regression", name="a")
        b = river_ml.add_model(linear_model_pipeline(), "regression", name="b")
        first = river_ml.predict(x, a)["identifier"]
        with pytest.raises(IdentifierNotFound):
            river_ml.label(y, first, b)
        assert river_ml.label(y, first, a) == "Successful label."
        with pytest.raises(IdentifierNotFound):
            river_ml.label(y, first, a)
        # A caller's own identifier, and learn consuming it with the stored features.
        assert river_ml.predict(x, a, identifier="mine")["identifier"] == "mine"
        assert river_ml.learn(a, ground_truth=y, identifier="mine") == "Successful learn."
        with pytest.raises(IdentifierNotFound):
            river_ml.learn(a, ground_truth=y, identifier="mine")
        expiring = river_ml.predict(x, a)["identifier"]
        time.sleep(1.3)
        with pytest.raises(IdentifierNotFound):
            river_ml.label(y, expiring, a)
    local = linear_model_pipeline()
    local.learn_one(x, y)
    local.learn_one(x, y)
    with app.app_context():
        assert river_ml.predict(x, a)["prediction"] == pytest.approx(local.predict_one(x))


def test_failure_reaches_its_sender_when_another_thread_applied_it(river_ml, monkeypatch):
    """A refused learn is reported even if another thread applied its record first."""
    name = river_ml.add_model(linear_model_pipeline(), "regression")
    engine = river_ml.state().engine
    commit = engine.backend.commit
    applied_first = []

    def append_then_interleave(change, guard=None):
        outcome = commit(change, guard)
        if change.record is not None:
            # Another request of this process catches up before the sender does.
            applied_first.append(engine.replicas.get(name).seq == outcome.seq)
        return outcome

    monkeypatch.setattr(engine.backend, "commit", append_then_interleave)
    with pytest.raises(ModelFailed):
        river_ml.learn(name, ground_truth=1.0, prediction=0.5, features={"ordinal_date": "not a number"})
    assert applied_first == [True]
    assert river_ml.learn(name, ground_truth=1.0, features={"ordinal_date": 3.0}) == "Successful learn."


def test_shelve_closes_the_connections_of_finished_threads(make_app):
    """Servers run a thread per request: their connections must not pile up."""
    app = make_app()
    river_ml = FlaskRiverML()
    with app.app_context():
        name = river_ml.add_model(linear_model_pipeline(), "regression")

    def request():
        with app.app_context():
            river_ml.predict({"ordinal_date": 1.0}, name)

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join()
    assert len(os.listdir("/proc/self/fd")) < before + 10


def test_learn_racing_a_replace_reaches_the_new_model(river_ml, monkeypatch):
    """A learn whose record lands just after save_model is applied to the new model."""
    name = river_ml.add_model(linear_model_pipeline(), "regression")
    samples = list(datasets.TrumpApproval().take(5))
    for x, y in samples:
        river_ml.learn(name, ground_truth=y, features=x)
    backend = river_ml.state().backend
    commit = backend.commit
    replacement = linear_model_pipeline()

    def replace_then_append(change, guard=None):
        if change.record is not None:
            monkeypatch.setattr(backend, "commit", commit)
            river_ml.save_model(replacement, name)
        return commit(change, guard)

    monkeypatch.setattr(backend, "commit", replace_then_append)
    x, y = samples[0]
    assert river_ml.learn(name, ground_truth=y, features=x) == "Successful learn."
    local = linear_model_pipeline()
    local.learn_one(x, y)
    probe = samples[1][0]
    assert river_ml.predict(probe, name)["prediction"] == pytest.approx(local.predict_one(probe), abs=1e-12)


def test_a_change_waiting_on_a_held_lock_is_busy(make_app, backend_name, monkeypatch):
    """A delete that cannot take the model's lock answers 503 with Retry-After, not 500."""
    from flask_river_ml import engine

    monkeypatch.setattr(engine, "CHANGE_WAIT", 0.2)
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name)
    with app.app_context():
        FlaskRiverML().add_model(linear_model_pipeline(), "regression", name="m")
        backend = FlaskRiverML.state(app).backend
    held, release = threading.Event(), threading.Event()

    def hold():
        with backend.lock(layout.change_lock("m")):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        response = app.test_client().delete("/api/model/m/")
    finally:
        release.set()
        holder.join()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "in progress" in response.get_json()["message"]
    assert app.test_client().delete("/api/model/m/").status_code == 200


def replay(samples: list) -> tuple[Any, Any]:
    """A local model trained on ``samples`` in order, and the MAE of a prequential run on them
    (each predicted before it is learnt)."""
    from river import metrics

    local, mae = linear_model_pipeline(), metrics.MAE()
    for x, y in samples:
        mae.update(y, local.predict_one(x))
        local.learn_one(x, y)
    return local, mae


def logged(app, name: str) -> list:
    """The samples of the log's records, in log order: single learns, each the sample as sent
    (no prediction of the sender's rides with it)."""
    state = FlaskRiverML.state(app)
    samples = []
    for _, blob in state.backend.read(layout.log(name)):
        tag, (x, y, waiting, prediction) = state.engine.replicas.codec.loads(blob)
        assert (tag, waiting, prediction) == ("learn", None, None)
        samples.append((x, y))
    return samples


def counted_commits(app, monkeypatch) -> list:
    """The outcomes of every commit the app's store makes from now on, in order."""
    backend = FlaskRiverML.state(app).backend
    commit, outcomes = backend.commit, []

    def counting(change, guard=None):
        outcome = commit(change, guard)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(backend, "commit", counting)
    return outcomes


@pytest.mark.parametrize("store", ["shelve", "redis"])
def test_learns_alternating_between_processes_commit_once_and_score_prequentially(make_app, store, monkeypatch):
    """Two processes (apps sharing the store) take turns: each learn's replica is one record
    behind, yet every learn is one commit, never refused, whose answer brings the other's
    record; the model and the metrics of both processes are those of a local prequential run."""
    apps = make_app(RIVER_ML_STORAGE_BACKEND=store), make_app(RIVER_ML_STORAGE_BACKEND=store)
    river_ml = FlaskRiverML()
    with apps[0].app_context():
        name = river_ml.add_model(linear_model_pipeline(), "regression")
    samples = list(datasets.TrumpApproval().take(60))
    for i, (x, y) in enumerate(samples[:2]):
        with apps[i % 2].app_context():
            river_ml.learn(name, ground_truth=y, features=x)
    outcomes = [counted_commits(app, monkeypatch) for app in apps]
    for i, (x, y) in enumerate(samples[2:]):
        with apps[i % 2].app_context():
            river_ml.learn(name, ground_truth=y, features=x)
    for found in outcomes:
        assert len(found) == len(samples[2:]) // 2
        assert all(outcome.written for outcome in found)
        # Each brings the one record the other process appended since this one's last learn.
        assert all([seq for seq, _ in outcome.unseen] == [outcome.seq - 1] for outcome in found)
    assert logged(apps[0], name) == samples
    local, mae = replay(samples)
    for app in apps:
        with app.app_context():
            assert river_ml.metrics(name)["MAE"] == pytest.approx(mae.get(), abs=1e-9)
            assert_same_predictions(river_ml, name, local, [x for x, _ in samples[:5]])


def test_concurrent_learns_leave_every_replica_alike(make_app, backend_name):
    """Six threads in two processes learn into one model at once: every record is in the log
    once, and every replica has the model and the metrics of a replay of the log."""
    first = make_app(RIVER_ML_STORAGE_BACKEND=backend_name)
    # The memory store lives in its app: there, the six threads share one.
    second = first if backend_name == "memory" else make_app(RIVER_ML_STORAGE_BACKEND=backend_name)
    river_ml = FlaskRiverML()
    with first.app_context():
        name = river_ml.add_model(linear_model_pipeline(), "regression")
    samples = list(datasets.TrumpApproval().take(300))
    assert learn_in_threads(river_ml, name, [((first, second)[i % 2], samples[i::6]) for i in range(6)]) == []
    records = logged(first, name)
    assert sorted(str(x) for x, _ in records) == sorted(str(x) for x, _ in samples)
    local, mae = replay(records)
    for app in (first, second):
        with app.app_context():
            assert river_ml.metrics(name)["MAE"] == pytest.approx(mae.get(), abs=1e-9)
            assert_same_predictions(river_ml, name, local, [x for x, _ in samples[:5]])


def test_predict_racing_a_delete_leaves_nothing_behind(river_ml, monkeypatch):
    """A predict whose model is deleted between its prediction and its write answers
    ModelNotFound and writes neither its waiting prediction nor its timing."""
    name = river_ml.add_model(linear_model_pipeline(), "regression")
    x, y = next(iter(datasets.TrumpApproval()))
    river_ml.learn(name, ground_truth=y, features=x)
    backend = river_ml.state().backend
    commit = backend.commit

    def delete_then_write(change, guard=None):
        monkeypatch.setattr(backend, "commit", commit)
        river_ml.delete_model(name)
        return commit(change, guard)

    monkeypatch.setattr(backend, "commit", delete_then_write)
    with pytest.raises(ModelNotFound):
        river_ml.predict(x, name)
    # Besides the fingerprint of the blob key, which the app recorded at start.
    assert backend.keys("") == ["generation", "key-fingerprint:RIVER_ML_SHELVE_SECRET_KEY"]
    assert backend.observed(layout.timings(name, "predict")) is None


@pytest.mark.parametrize("store", ["shelve", "redis"])
def test_predict_on_a_replica_behind_the_log_predicts_again(make_app, store):
    """A process whose replica missed another's learns predicts exactly like the model that
    learnt them: the write of its first prediction is refused, it catches up, predicts again."""
    first, second = make_app(RIVER_ML_STORAGE_BACKEND=store), make_app(RIVER_ML_STORAGE_BACKEND=store)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(20))
    local = linear_model_pipeline()
    with first.app_context():
        name = river_ml.add_model(linear_model_pipeline(), "regression")
    for x, y in samples:
        with second.app_context():
            assert river_ml.predict(x, name)["prediction"] == pytest.approx(local.predict_one(x), abs=1e-12)
        with first.app_context():
            river_ml.learn(name, ground_truth=y, features=x)
        local.learn_one(x, y)
    with second.app_context():
        assert river_ml.stats(name)["predict"]["n_calls"] == 20


def test_a_log_that_skips_past_its_snapshot_answers_busy(make_app, tmp_path):
    """A store whose log does not continue from the model's snapshot (restored in part, say)
    makes a request answer Busy instead of reloading the snapshot forever."""
    from flask_river_ml import Busy

    instance = tmp_path / "shared"
    river_ml = FlaskRiverML()
    first = make_app(instance_path=instance)
    samples = list(datasets.TrumpApproval().take(5))
    with first.app_context():
        name = river_ml.add_model(linear_model_pipeline(), "regression")
        for x, y in samples:
            river_ml.learn(name, ground_truth=y, features=x)
        FlaskRiverML.state(first).backend.trim(layout.log(name), 4)  # records 1-3 gone, snapshot at 0
    second = make_app(instance_path=instance)
    with second.app_context(), pytest.raises(Busy):
        river_ml.predict(samples[0][0], name)


# --- model code that raises: no request kills a worker, no half-applied model ---------------------


class Panic(BaseException):
    """What river's Rust code raises on a panic: a BaseException that passes ``except Exception``."""


#: How many more times a :class:`Fragile` model stops the interpreter when asked to (a worker
#: stopped once in the middle of a learn, not at every replay of the record).
EXITS_LEFT = [0]


class Fragile(base.Regressor):
    """A regressor that changes its state, then raises, when a sample asks it to: a model
    left half-changed by its failure. It predicts the sum of the values it has learnt."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def learn_one(self, x: dict, y: Any) -> None:
        self.seen.append(x["v"])
        if x.get("fail") == "panic":
            raise Panic("called `Option::unwrap()` on a `None` value")
        if x.get("fail") == "exit" and EXITS_LEFT[0] > 0:
            EXITS_LEFT[0] -= 1
            raise SystemExit(1)

    def predict_one(self, x: dict) -> float:
        if x.get("fail") == "predict":
            raise Panic("cannot predict")
        return float(sum(self.seen))


def shared_apps(make_app, tmp_path, store: str = "shelve", **config: Any) -> tuple[Any, Any]:
    """Two apps on one store: two server processes."""
    instance = tmp_path / "shared"
    options = {"RIVER_ML_STORAGE_BACKEND": store, **config}
    return make_app(instance_path=instance, **options), make_app(instance_path=instance, **options)


def served(app, name: str) -> float:
    with app.app_context():
        return FlaskRiverML().predict({"v": 0}, name)["prediction"]


@pytest.mark.parametrize("store", ["shelve", "redis"])
@pytest.mark.parametrize("snapshot_every", [1000, 2])
def test_a_record_that_fails_halfway_is_skipped_by_every_replica(make_app, tmp_path, store, snapshot_every):
    """A learn whose model raises a BaseException halfway: ModelFailed, the replica rebuilt
    without the record, and another process (behind it, or a snapshot past it) skips it too."""
    first, second = shared_apps(make_app, tmp_path, store, RIVER_ML_SNAPSHOT_EVERY=snapshot_every)
    river_ml = FlaskRiverML()
    with first.app_context():
        name = river_ml.add_model(Fragile(), "regression")
        for v in (1, 2):
            river_ml.learn(name, ground_truth=0.0, features={"v": v})
    assert served(second, name) == 3.0  # the second process holds a replica at record 2
    with first.app_context():
        with pytest.raises(ModelFailed, match="Panic: called `Option::unwrap"):
            river_ml.learn(name, ground_truth=0.0, features={"v": 100, "fail": "panic"})
        assert river_ml.predict({"v": 0}, name)["prediction"] == 3.0
        assert river_ml.stats(name)["learn"]["n_calls"] == 2
    with second.app_context():
        # Its catch-up meets the record, fails the same way, rebuilds and applies the next.
        river_ml.learn(name, ground_truth=0.0, features={"v": 4})
        assert river_ml.predict({"v": 0}, name)["prediction"] == 7.0
        assert river_ml.get_model(name).seen == [1, 2, 4]
    assert served(first, name) == 7.0
    # A process starting afresh from the store agrees, and the exit snapshots keep it so.
    for app in (first, second):
        FlaskRiverML.state(app).engine.close()
    third = make_app(instance_path=tmp_path / "shared", RIVER_ML_STORAGE_BACKEND=store)
    with third.app_context():
        assert river_ml.get_model(name).seen == [1, 2, 4]


@pytest.mark.parametrize("racer", ["learns", "fails"])
def test_the_sender_learns_of_its_failure_from_a_snapshot_past_it(make_app, tmp_path, monkeypatch, racer):
    """Another process applied (and skipped) a record and snapshotted past it before its
    sender caught up: the sender still answers ModelFailed, from the snapshot. It meets the
    snapshot when the commit's answer lacks the record before its own (written by a process
    that did not ask for the records it missed), or when that record fails too, and its
    sender's rebuild loads the snapshot."""
    first, second = shared_apps(make_app, tmp_path, RIVER_ML_SNAPSHOT_EVERY=1)
    river_ml = FlaskRiverML()
    with first.app_context():
        name = river_ml.add_model(Fragile(), "regression")
        river_ml.learn(name, ground_truth=0.0, features={"v": 1})
    backend = FlaskRiverML.state(first).backend
    codec = FlaskRiverML.state(first).engine.replicas.codec
    commit = backend.commit
    raced = {"v": 2} if racer == "learns" else {"v": 2, "fail": "panic"}

    def racing_writers(change, guard=None):
        if change.record is None:
            return commit(change, guard)
        # A writer lands first, this record after it; the other process applies both and
        # snapshots past them before this one reads them back.
        unasked = Guard(guard.log, None, guard.key, guard.value)
        commit(Change(record=codec.dumps(("learn", (raced, 0.0, None, None)))), unasked)
        appended = commit(change, guard if racer == "fails" else unasked)
        assert [seq for seq, _ in appended.unseen] == ([2] if racer == "fails" else [])
        with second.app_context():
            river_ml.learn(name, ground_truth=0.0, features={"v": 3})
        assert backend.get(layout.snapshot_seq(name)) == b"4"
        assert [seq for seq, _ in backend.read(layout.log(name))] == [4]
        return appended

    monkeypatch.setattr(backend, "commit", racing_writers)
    with first.app_context(), pytest.raises(ModelFailed, match="Panic"):
        river_ml.learn(name, ground_truth=0.0, features={"v": 100, "fail": "panic"})
    monkeypatch.setattr(backend, "commit", commit)
    assert served(first, name) == served(second, name) == (6.0 if racer == "learns" else 4.0)


@pytest.mark.parametrize("failing", ["predict", "metric"])
def test_base_exceptions_of_predictions_and_metrics_are_model_failures(river_ml, monkeypatch, failing):
    name = river_ml.add_model(Fragile(), "regression")
    river_ml.learn(name, ground_truth=1.0, features={"v": 1})
    if failing == "predict":
        with pytest.raises(ModelFailed, match="could not predict from these features: Panic: cannot predict"):
            river_ml.predict({"v": 0, "fail": "predict"}, name)
    else:
        from river import metrics

        def panic(self):
            raise Panic("metric state")

        monkeypatch.setattr(metrics.MAE, "get", panic)
        with pytest.raises(ModelFailed, match="The metric MAE could not be computed: Panic: metric state"):
            river_ml.metrics(name)
        monkeypatch.undo()
    assert river_ml.predict({"v": 0}, name)["prediction"] == 1.0
    assert river_ml.metrics(name)["MAE"] == 1.0  # the first prediction, 0.0, against 1.0


def test_a_failure_over_http_is_400_json(app):
    """The same failures through the HTTP API: a 400 naming them, and the server answers on."""
    river_ml = FlaskRiverML()
    name = river_ml.add_model(Fragile(), "regression")
    client = app.test_client()
    response = client.post(
        "/api/learn/", json={"model": name, "features": {"v": 5, "fail": "panic"}, "ground_truth": 1}
    )
    assert response.status_code == 400
    assert "Panic" in response.get_json()["message"]
    response = client.post("/api/predict/", json={"model": name, "features": {"v": 0, "fail": "predict"}})
    assert response.status_code == 400
    assert "cannot predict" in response.get_json()["message"]
    response = client.post("/api/predict/", json={"model": name, "features": {"v": 0}})
    assert response.status_code == 201
    assert response.get_json()["prediction"] == 0.0


def test_an_interpreter_exit_halfway_discards_the_replica(make_app, tmp_path):
    """A worker stopped in the middle of a learn (gunicorn's timeout raises SystemExit) lets
    the exit through, and its exit snapshot does not save the half-changed model."""
    first, second = shared_apps(make_app, tmp_path)
    river_ml = FlaskRiverML()
    with first.app_context():
        name = river_ml.add_model(Fragile(), "regression")
        river_ml.learn(name, ground_truth=0.0, features={"v": 1})
        EXITS_LEFT[0] = 1
        with pytest.raises(SystemExit):
            river_ml.learn(name, ground_truth=0.0, features={"v": 10, "fail": "exit"})
        engine = FlaskRiverML.state(first).engine
        engine.close()
        assert engine.backend.get(layout.snapshot_seq(name)) == b"0"
    # The record was stored before the exit: it is applied, once, by whoever comes next.
    with second.app_context():
        assert river_ml.get_model(name).seen == [1, 10]
    with first.app_context():
        assert river_ml.get_model(name).seen == [1, 10]


def test_a_learn_whose_prediction_fails_still_learns(river_ml):
    """MultinomialNB after an empty first sample cannot predict (ZeroDivisionError): the
    learns go on, and the metrics skip the samples it could not predict."""
    from river import metrics

    name = river_ml.add_model(naive_bayes.MultinomialNB(), "multiclass")
    samples = [({}, "a"), ({"x": 1}, "b"), ({"x": 1}, "b"), ({"x": 2, "y": 1}, "a"), ({"y": 3}, "a")]
    local, accuracy = naive_bayes.MultinomialNB(), metrics.Accuracy()
    failed = 0
    for x, y in samples:
        assert river_ml.learn(name, ground_truth=y, features=x) == "Successful learn."
        try:
            label = local.predict_one(x)
        except ZeroDivisionError:
            failed += 1
        else:
            if label is not None:
                accuracy.update(y, label)
        local.learn_one(x, y)
    assert failed >= 1
    assert river_ml.metrics(name)["Accuracy"] == pytest.approx(accuracy.get())
    assert river_ml.stats(name)["learn"]["n_calls"] == len(samples)
    for x in ({"x": 1}, {"y": 2}, {"x": 3, "y": 1}):
        assert river_ml.predict(x, name)["prediction"] == local.predict_one(x)


def test_a_learn_stored_before_its_snapshot_fails_succeeds(make_app, backend_name, monkeypatch):
    """The snapshot due after an append fails (its lock, the store): the learn still
    succeeds, its record is in the log, and the next learn takes the snapshot."""
    from flask_river_ml import StoreUnavailable

    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_SNAPSHOT_EVERY=2)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(3))
    with app.app_context():
        name = river_ml.add_model(linear_model_pipeline(), "regression")
        backend = FlaskRiverML.state(app).backend
        river_ml.learn(name, ground_truth=samples[0][1], features=samples[0][0])

        @contextlib.contextmanager
        def unavailable(*args, **kwargs):
            raise StoreUnavailable("The redis store cannot be reached.")
            yield

        with monkeypatch.context() as patch:
            patch.setattr(backend, "lock", unavailable)
            assert river_ml.learn(name, ground_truth=samples[1][1], features=samples[1][0]) == "Successful learn."
        assert [seq for seq, _ in backend.read(layout.log(name))] == [1, 2]
        assert backend.get(layout.snapshot_seq(name)) == b"0"
        river_ml.learn(name, ground_truth=samples[2][1], features=samples[2][0])
        assert backend.get(layout.snapshot_seq(name)) == b"3"
    local = linear_model_pipeline()
    for x, y in samples:
        local.learn_one(x, y)
    with app.app_context():
        assert_same_predictions(river_ml, name, local, [x for x, _ in samples])


def test_a_learn_stored_before_its_catch_up_fails_succeeds(river_ml, monkeypatch):
    """A learn whose record is appended behind another process's, and whose read of that
    record then fails, answers success: its record is applied by the next request."""
    from flask_river_ml import StoreUnavailable

    name = river_ml.add_model(Fragile(), "regression")
    assert river_ml.predict({"v": 0}, name)["prediction"] == 0.0  # the replica is held: no read first
    backend = river_ml.state().backend
    commit = backend.commit
    codec = river_ml.state().engine.replicas.codec

    def another_writer_first(change, guard=None):
        if change.record is not None:
            guard = Guard(guard.log, None, guard.key, guard.value)
            commit(Change(record=codec.dumps(({"v": 1}, 0.0, None, None, None))), guard)
        return commit(change, guard)

    def unavailable(*args):
        raise StoreUnavailable("The store cannot be reached.")

    with monkeypatch.context() as patch:
        patch.setattr(backend, "commit", another_writer_first)
        patch.setattr(backend, "read", unavailable)
        assert river_ml.learn(name, ground_truth=0.0, features={"v": 2}) == "Successful learn."
    assert river_ml.get_model(name).seen == [1, 2]


def test_a_failed_record_whose_rebuild_fails_is_still_refused(river_ml, monkeypatch):
    """The store fails while a replica is rebuilt after a failed record: the learn still
    answers ModelFailed, the half-changed replica is discarded, never served nor
    snapshotted, and the next request, with the store back, reloads it."""
    from flask_river_ml import StoreUnavailable

    name = river_ml.add_model(Fragile(), "regression")
    river_ml.learn(name, ground_truth=0.0, features={"v": 1})
    state = river_ml.state()
    get = state.backend.get

    def snapshot_unavailable(key):
        if key.startswith("snapshot:{"):
            raise StoreUnavailable("The store cannot be reached.")
        return get(key)

    with monkeypatch.context() as patch:
        patch.setattr(state.backend, "get", snapshot_unavailable)
        with pytest.raises(ModelFailed, match="Panic"):
            river_ml.learn(name, ground_truth=0.0, features={"v": 100, "fail": "panic"})
    state.engine.close()
    assert state.backend.get(layout.snapshot_seq(name)) == b"0"
    assert river_ml.get_model(name).seen == [1]
    assert river_ml.learn(name, ground_truth=0.0, features={"v": 2}) == "Successful learn."
    assert river_ml.predict({"v": 0}, name)["prediction"] == 3.0


def test_a_log_record_that_fails_its_signature_is_skipped(make_app, tmp_path):
    """A record written into the log without the key is never unpickled, and does not block
    the records after it: every process skips it."""
    first, second = shared_apps(make_app, tmp_path)
    river_ml = FlaskRiverML()
    with first.app_context():
        name = river_ml.add_model(Fragile(), "regression")
        river_ml.learn(name, ground_truth=0.0, features={"v": 1})
        marker = tmp_path / "pwned"
        forged = b"\x00" * 32 + b"p" + pickle.dumps(_Exploit(str(marker)))
        append(FlaskRiverML.state(first).backend, layout.log(name), forged)
        assert river_ml.learn(name, ground_truth=0.0, features={"v": 2}) == "Successful learn."
        assert river_ml.get_model(name).seen == [1, 2]
    with second.app_context():
        assert river_ml.get_model(name).seen == [1, 2]
    assert not marker.exists()


def test_a_snapshot_written_before_failures_were_kept_loads(make_app, tmp_path):
    from flask_river_ml.engine import Snapshot

    first, second = shared_apps(make_app, tmp_path)
    with first.app_context():
        name = FlaskRiverML().add_model(Fragile(), "regression")
        state = FlaskRiverML.state(first)
        old = Snapshot(Fragile(), [], 0, "1", "regression")
        del vars(old)["skipped"]
        state.backend.set(layout.snapshot(name), state.engine.replicas.codec.dumps(old))
        state.backend.set(layout.model(name), b'{"flavor": "regression", "generation": "1"}')
    with second.app_context():
        FlaskRiverML().learn(name, ground_truth=0.0, features={"v": 3})
        assert FlaskRiverML().predict({"v": 0}, name)["prediction"] == 3.0

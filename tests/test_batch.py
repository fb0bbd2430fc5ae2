"""Batches: ``POST /api/learn/batch/`` and ``/api/predict/batch/``, and ``learn_batch`` and
``predict_batch`` in process.

A batch gives what its samples sent one by one give (two apps side by side, on each backend and
for each supervised flavor, and a local river model trained on the same samples); a batch with
one bad sample is refused whole, naming the sample, and changes nothing; other processes, a
restart and snapshots replay a batch's record as its sender learnt it; a batch killed with its
server is wholly in the model or wholly out; and batches have a size limit.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest
import requests
from flask import Flask
from marshmallow import Schema, ValidationError, fields
from river import base, datasets, evaluate, linear_model, metrics, naive_bayes, preprocessing
from servers import serve
from slow_model import SlowRegressor
from test_worker_survives import rust_model

from flask_river_ml import (
    FlaskRiverML,
    IdentifierNotFound,
    InvalidInput,
    ModelFailed,
    TooLarge,
    layout,
    payloads,
)
from flask_river_ml import samples as batch_samples
from flask_river_ml.encoding import jsonable
from flask_river_ml.engine.batches import _timings
from flask_river_ml.flavors import get_flavor
from flask_river_ml.http.schemas import LearnBatchSchema, PredictBatchSchema
from flask_river_ml.stats import EWM_ALPHA
from flask_river_ml.storage import create_backend

MODEL = "batched"
NAN = float("nan")
TESTS = Path(__file__).resolve().parent


# --- helpers -----------------------------------------------------------------------------------


def binary_model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def multiclass_model() -> Any:
    return naive_bayes.GaussianNB()


def regression_model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


#: flavor -> (a fresh model, the samples it learns, probes it predicts).
CASES: dict[str, tuple[Any, list, list]] = {
    "binary": (binary_model, list(datasets.Phishing().take(150)), [x for x, _ in datasets.Phishing().take(160)][150:]),
    "multiclass": (
        multiclass_model,
        list(datasets.ImageSegments().take(150)),
        [x for x, _ in datasets.ImageSegments().take(160)][150:],
    ),
    "regression": (
        regression_model,
        list(datasets.TrumpApproval().take(150)),
        [x for x, _ in datasets.TrumpApproval().take(160)][150:],
    ),
}


def batch_of(samples: list) -> list[dict[str, Any]]:
    """HTTP samples of (x, y) pairs."""
    return [{"features": x, "ground_truth": y} for x, y in samples]


def learn_batch(client, samples: list, name: str = MODEL):
    return client.post("/api/learn/batch/", json={"model": name, "samples": samples})


def predict_batch(client, samples: list, name: str = MODEL):
    return client.post("/api/predict/batch/", json={"model": name, "samples": samples})


def upload(app: Flask, model: Any, flavor: str, name: str = MODEL) -> None:
    with app.app_context():
        FlaskRiverML().add_model(model, flavor, name=name)


def served(app: Flask, name: str = MODEL) -> tuple[dict, dict]:
    """The model's metrics and stats, in process."""
    with app.app_context():
        river_ml = FlaskRiverML()
        return river_ml.metrics(name), river_ml.stats(name)


def log_of(app: Flask, name: str = MODEL) -> list[tuple[int, bytes]]:
    return FlaskRiverML.state(app).backend.read(layout.log(name))


def prequential(flavor: str, model: Any, samples: list) -> dict[str, float]:
    """The flavor's metrics of a local river run on ``samples`` (river's own evaluation)."""
    scored = metrics.base.Metrics(get_flavor(flavor).new_metrics())
    evaluate.progressive_val_score(samples, model, scored)
    return {type(metric).__name__: metric.get() for metric in scored}


def assert_close(served_values: dict, local_values: dict) -> None:
    assert served_values.keys() == local_values.keys()
    for key, value in local_values.items():
        assert served_values[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def prediction_of(flavor: str, model: Any, x: dict) -> Any:
    return model.predict_proba_one(x) if flavor == "binary" else model.predict_one(x)


def same_prediction(served_value: Any, local: Any) -> bool:
    """Whether a served prediction (over JSON or in process) is the local model's, to 1e-9."""
    served_value, local = jsonable(served_value), jsonable(local)
    if isinstance(local, dict):
        return served_value.keys() == local.keys() and all(
            math.isclose(served_value[key], p, abs_tol=1e-9) for key, p in local.items()
        )
    if isinstance(local, float):
        return math.isclose(served_value, local, rel_tol=1e-9, abs_tol=1e-9)
    return bool(served_value == local)


class Watch:
    """Every event and metrics message one app's streams get, from the moment it is made."""

    def __init__(self, app: Flask) -> None:
        events = FlaskRiverML.state(app).service.events
        self._subscriptions = (events.events.subscribe(), events.metrics.subscribe())
        self.events: list[dict] = []
        self.metrics: list[dict] = []

    def read(self, events: int, metrics: int, timeout: float = 10) -> tuple[list[dict], list[dict]]:
        """The first ``events`` events and ``metrics`` metrics messages (the shelve and redis
        buses deliver from a thread of their own), and no more if more came soon after."""
        deadline = time.monotonic() + timeout
        channels = zip(self._subscriptions, (self.events, self.metrics), (events, metrics), strict=True)
        for subscription, found, count in channels:
            while len(found) < count and time.monotonic() < deadline:
                message = subscription.get(0.05)
                if message is not None:
                    found.append(json.loads(message))
            extra = subscription.get(0.2)
            if extra is not None:
                found.append(json.loads(extra))
        return self.events, self.metrics

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()


@pytest.fixture
def twins(make_app, backend_name, tmp_path, redis_prefix) -> Iterator[tuple[Flask, Flask]]:
    """Two apps on two stores of the same backend: one learns by batches, one sample by sample."""
    apps = tuple(
        make_app(
            instance_path=tmp_path / side,
            RIVER_ML_STORAGE_BACKEND=backend_name,
            RIVER_ML_REDIS_PREFIX=f"{redis_prefix}{side}:",
        )
        for side in ("batched", "single")
    )
    yield apps  # type: ignore[misc]


@pytest.fixture
def app(make_app) -> Flask:
    return make_app(RIVER_ML_STORAGE_BACKEND="memory")


# --- a batch is its samples sent one by one ----------------------------------------------------


@pytest.mark.parametrize("flavor", sorted(CASES))
def test_a_batch_is_its_samples_one_by_one_and_a_local_river_run(twins, flavor):
    """Learnt by batches of 50 on one app and one sample at a time on the other: the same
    predictions, metrics (to 1e-9), stats and events, and those of a local river model trained
    prequentially on the same samples."""
    new_model, samples, probes = CASES[flavor]
    batched, single = twins
    for app in twins:
        upload(app, new_model(), flavor)
    watches = [Watch(app) for app in twins]
    try:
        client = batched.test_client()
        for start in range(0, len(samples), 50):
            response = learn_batch(client, batch_of(samples[start : start + 50]))
            assert response.status_code == 201, response.get_json()
            assert response.get_json() == {"learned": 50}
        client = single.test_client()
        for x, y in samples:
            response = client.post("/api/learn/", json={"model": MODEL, "features": x, "ground_truth": y})
            assert response.status_code == 201, response.get_json()

        by_batch = predict_batch(batched.test_client(), [{"features": x} for x in probes])
        assert by_batch.status_code == 201, by_batch.get_json()
        one_by_one = [
            single.test_client().post("/api/predict/", json={"model": MODEL, "features": x}).get_json() for x in probes
        ]
        body = by_batch.get_json()
        assert body["model"] == MODEL and len(body["identifiers"]) == len(probes)
        assert body["predictions"] == [answer["prediction"] for answer in one_by_one]

        count = len(samples) + len(probes)
        (batch_events, batch_metrics), (single_events, single_metrics) = (w.read(count, len(samples)) for w in watches)
        assert len(batch_events) == count and len(batch_metrics) == len(samples)
        assert [event["event"] for event in batch_events] == ["learn"] * len(samples) + ["predict"] * len(probes)
        assert batch_events == single_events
        assert batch_metrics == single_metrics
    finally:
        for watch in watches:
            watch.close()

    (batch_values, batch_stats), (single_values, single_stats) = served(batched), served(single)
    assert batch_values == single_values
    for kind, calls in (("learn", len(samples)), ("predict", len(probes))):
        assert batch_stats[kind]["n_calls"] == single_stats[kind]["n_calls"] == calls
        assert batch_stats[kind]["mean_duration"] > 0

    local = new_model()
    assert_close(batch_values, prequential(flavor, local, samples))
    for x, value in zip(probes, body["predictions"], strict=True):
        assert same_prediction(value, prediction_of(flavor, local, x)), (value, prediction_of(flavor, local, x))


def test_in_process_batches_take_river_streams_generators_and_http_samples(app):
    """learn_batch takes a river dataset's stream, a generator of (x, y) pairs and dictionaries
    as the HTTP route takes them; predict_batch takes feature dictionaries and pairs. Each
    gives what the same samples learnt one by one in process give (pandas is not installed
    here: river.stream.iter_pandas yields the same pairs as the generator)."""
    river_ml = FlaskRiverML()
    samples = list(datasets.Phishing().take(120))
    probes = [x for x, _ in datasets.Phishing().take(130)][120:]
    with app.app_context():
        for name in ("batched", "single"):
            river_ml.add_model(binary_model(), "binary", name=name)
        assert river_ml.learn_batch("batched", datasets.Phishing().take(40)) == 40
        assert river_ml.learn_batch("batched", ((x, y) for x, y in samples[40:80])) == 40
        assert river_ml.learn_batch("batched", batch_of(samples[80:])) == 40
        for x, y in samples:
            river_ml.learn("single", ground_truth=y, features=x)
        assert river_ml.metrics("batched") == river_ml.metrics("single")
        assert river_ml.stats("batched")["learn"]["n_calls"] == len(samples)

        result = river_ml.predict_batch(probes, "batched")
        assert set(result) == {"model", "predictions", "identifiers"} and result["model"] == "batched"
        assert result["predictions"] == [river_ml.predict(x, "single")["prediction"] for x in probes]
        assert all(isinstance(identifier, str) for identifier in result["identifiers"])
        pairs = river_ml.predict_batch(datasets.Phishing().take(3), "batched", identifiers=["a", "b", 7])
        assert pairs["identifiers"] == ["a", "b", "7"]
        assert pairs["predictions"] == [river_ml.predict(x, "single")["prediction"] for x, _ in samples[:3]]
        assert river_ml.stats("batched")["predict"]["n_calls"] == len(probes) + 3
        # The waiting predictions label as single predictions do.
        assert river_ml.label(samples[0][1], "a", "batched") == "Successful label."
        assert river_ml.learn_batch("batched", [{"identifier": "b", "ground_truth": samples[1][1]}]) == 1


def test_an_empty_batch_learns_and_predicts_nothing(app):
    client = app.test_client()
    upload(app, regression_model(), "regression")
    assert learn_batch(client, []).get_json() == {"learned": 0}
    response = predict_batch(client, [])
    assert response.status_code == 200 and response.get_json() == {"model": MODEL, "predictions": [], "identifiers": []}
    assert log_of(app) == [] and served(app)[1]["learn"]["n_calls"] == 0
    assert learn_batch(client, [], name="absent").status_code == 404
    assert predict_batch(client, [], name="absent").status_code == 404


class Meddling(base.Regressor):
    """A regressor that changes the features it is given: a predict takes ``spare`` out of
    them, a learn empties them. It cannot predict a sample with ``mute`` (it raises), and
    predicts how many samples it learnt otherwise."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def predict_one(self, x: dict) -> float:
        if "mute" in x:
            raise ValueError("cannot predict this sample")
        x.pop("spare", None)
        return float(len(self.seen))

    def learn_one(self, x: dict, y: Any) -> None:
        self.seen.append(sorted(x))
        x.clear()


def test_a_model_that_changes_its_features_or_cannot_predict_learns_a_batch_as_single_learns(make_app):
    """Each call into the model gets features of its own, in a batch as in single learns: what a
    predict takes out of them the learn still sees, and what the model does to them changes
    neither the events nor the predictions waiting for labels. A sample the model cannot predict
    is learnt, and the metrics skip it."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    river_ml = FlaskRiverML()
    samples = [({"a": 1.0, "spare": 2.0}, 1.0), ({"a": 2.0, "mute": 1.0}, 2.0), ({"a": 3.0, "spare": 0.0}, 4.0)]
    probes = [{"a": 4.0, "spare": 1.0}, {"a": 5.0}]
    for name in ("batched", "single"):
        upload(app, Meddling(), "regression", name)
    watch = Watch(app)
    try:
        with app.app_context():
            assert river_ml.learn_batch("batched", [(dict(x), y) for x, y in samples]) == len(samples)
            for x, y in samples:
                river_ml.learn("single", ground_truth=y, features=dict(x))
            batched = river_ml.predict_batch([dict(x) for x in probes], "batched", identifiers=["p0", "p1"])
            single = [river_ml.predict(dict(x), "single", identifier=f"p{i}") for i, x in enumerate(probes)]
            assert batched["predictions"] == [answer["prediction"] for answer in single] == [3.0, 3.0]
            labels = [{"identifier": "p0", "ground_truth": 1.0}, {"identifier": "p1", "ground_truth": 2.0}]
            assert river_ml.learn_batch("batched", labels) == 2
            for label in labels:
                river_ml.learn("single", **label)
            expected = [["a", "spare"], ["a", "mute"], ["a", "spare"], ["a", "spare"], ["a"]]
            assert river_ml.get_model("batched").seen == river_ml.get_model("single").seen == expected
            assert river_ml.metrics("batched") == river_ml.metrics("single")
            assert river_ml.stats("batched")["learn"]["n_calls"] == river_ml.stats("single")["learn"]["n_calls"] == 5
        events, _ = watch.read(14, 10)
    finally:
        watch.close()
    assert len(events) == 14
    by_model: dict[str, list[dict]] = {"batched": [], "single": []}
    for event in events:
        by_model[event["data"].pop("model")].append(event)
    assert by_model["batched"] == by_model["single"]
    learnt = [event["data"] for event in by_model["batched"] if event["event"] == "learn"]
    assert [data["features"] for data in learnt] == [x for x, _ in samples] + probes
    assert [data["prediction"] for data in learnt] == [0.0, None, 2.0, 3.0, 3.0]


class _RawSamples(Schema):
    """What the batch schemas loaded their samples with before: marshmallow's list of raw values."""

    model = fields.String(required=True)
    samples = fields.List(fields.Raw(), required=True)


@pytest.mark.parametrize(
    "samples",
    [None, "abc", {}, 5, [], [None], [1, None], [{"features": {}}, None, [], None], [[1, 2], {"features": {}}]],
    ids=repr,
)
def test_a_batch_body_loads_and_is_refused_as_a_list_of_raw_values(samples):
    """The batch schemas take the samples as marshmallow's list of raw values takes them, and
    refuse what it refuses with its errors (a missing or null field, a value that is no list,
    null samples by their index); what they load is marked as a parsed body's."""
    payload = {"model": MODEL} if samples is None else {"model": MODEL, "samples": samples}

    def load(schema: Schema) -> Any:
        try:
            return schema.load(payload)
        except ValidationError as error:
            return error.messages

    expected, learnt = load(_RawSamples()), load(LearnBatchSchema())
    assert learnt == expected
    if "model" in expected:
        assert type(learnt["samples"]) is payloads.Parsed
        predicted = load(PredictBatchSchema())
        assert "model" not in predicted or type(predicted["features"]) is payloads.Parsed
    else:
        assert load(PredictBatchSchema()) == expected


def test_the_samples_of_a_body_are_checked_once_and_those_in_process_each(app, monkeypatch):
    """A JSON body's values are checked by its parser: the samples it holds are not walked
    again, sample by sample. Samples given in process are, each of its features, ground truth
    and prediction (a NaN among them is refused: see the bad samples above)."""
    walks: list[str] = []
    check = payloads.check_values

    def counted(value: Any, what: str) -> None:
        walks.append(what)
        check(value, what)

    monkeypatch.setattr(payloads, "check_values", counted)
    monkeypatch.setattr(batch_samples, "check_values", counted)
    client = app.test_client()
    upload(app, binary_model(), "binary")
    samples = list(datasets.Phishing().take(20))
    assert learn_batch(client, batch_of(samples)).get_json() == {"learned": 20}
    assert predict_batch(client, [{"features": x} for x, _ in samples]).status_code == 201
    assert walks == []
    with app.app_context():
        assert FlaskRiverML().learn_batch(MODEL, batch_of(samples)) == 20
        assert walks == ["ground_truth", "prediction", "features"] * 20
        walks.clear()
        FlaskRiverML().predict_batch([x for x, _ in samples], MODEL)
        assert walks == ["features"] * 20


def test_a_batch_times_each_sample_with_its_share_of_its_duration():
    """One call per sample, under the kind's key, in at most two timings of equal calls: the
    shares add up to the batch's duration and differ by one nanosecond at most, the longer
    first; an untimed or empty batch times none."""
    before = time.perf_counter_ns()
    for count in (7, 1, 1000):
        timings = _timings(MODEL, "learn", before - 1_000_000, count)
        duration = sum(timing.duration * timing.calls for timing in timings)
        assert 1_000_000 <= duration <= time.perf_counter_ns() - before + 1_000_000
        assert sum(timing.calls for timing in timings) == count and all(timing.calls for timing in timings)
        shares = [timing.duration for timing in timings]
        assert 1 <= len(timings) <= 2 and shares == sorted(shares, reverse=True) and shares[0] - shares[-1] <= 1
        assert {(timing.key, timing.alpha) for timing in timings} == {(layout.timings(MODEL, "learn"), EWM_ALPHA)}
    assert _timings(MODEL, "learn", None, 7) == () == _timings(MODEL, "learn", before, 0)


# --- identifiers -------------------------------------------------------------------------------


def test_a_learn_batch_consumes_the_predictions_it_labels(app):
    """A sample with an identifier learns from the prediction waiting there (its features, and
    its prediction for the metrics) and consumes it, as a single label does: the same model and
    metrics as labels one by one; a second batch naming one of them is refused, and so is a batch
    naming one identifier twice."""
    client = app.test_client()
    samples = list(datasets.TrumpApproval().take(30))
    for name in ("batched", "single"):
        upload(app, regression_model(), "regression", name)
        assert learn_batch(client, batch_of(samples[:20]), name).status_code == 201
        kept = [{"features": x, "identifier": f"id-{i}"} for i, (x, _) in enumerate(samples[20:])]
        response = predict_batch(client, kept, name)
        assert response.status_code == 201 and response.get_json()["identifiers"] == [f"id-{i}" for i in range(10)]
    labels = [{"identifier": f"id-{i}", "ground_truth": y} for i, (_, y) in enumerate(samples[20:])]
    assert learn_batch(client, labels, "batched").get_json() == {"learned": 10}
    for label in labels:
        body = {"model": "single", "identifier": label["identifier"], "label": label["ground_truth"]}
        assert client.post("/api/label/", json=body).status_code == 200
    assert served(app, "batched")[0] == served(app, "single")[0]
    probe = samples[0][0]
    with app.app_context():
        river_ml = FlaskRiverML()
        assert river_ml.predict(probe, "batched")["prediction"] == river_ml.predict(probe, "single")["prediction"]

    again = learn_batch(client, [labels[1], labels[0]], "batched")
    assert again.status_code == 400 and list(again.get_json()["errors"]["samples"]) == ["0"]
    assert "id-1" in again.get_json()["message"]
    assert predict_batch(client, [{"features": probe, "identifier": "t"}], "batched").status_code == 201
    twice = learn_batch(client, [{"identifier": "t", "ground_truth": 1.0}] * 2, "batched")
    assert twice.status_code == 400 and list(twice.get_json()["errors"]["samples"]) == ["1"]
    assert "Sample 0 of this batch" in twice.get_json()["message"]
    assert len(log_of(app, "batched")) == 2
    assert client.post("/api/label/", json={"model": "batched", "identifier": "t", "label": 1.0}).status_code == 200


def test_a_predict_batch_keeps_its_predictions_as_single_predicts_do(make_app):
    """Identifiers given are kept (409 naming the sample when one waits already, and then none
    is kept), generated ones too; without generated identifiers a batch without any keeps none
    and answers 200, as a single predict does."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    client = app.test_client()
    upload(app, regression_model(), "regression")
    x, _ = next(iter(datasets.TrumpApproval()))
    assert client.post("/api/predict/", json={"model": MODEL, "features": x, "identifier": "taken"}).status_code == 201
    taken = predict_batch(client, [{"features": x, "identifier": "new"}, {"features": x, "identifier": "taken"}])
    assert taken.status_code == 409, taken.get_json()
    assert taken.get_json()["errors"] == {"samples": {"1": [taken.get_json()["message"].split(": ", 1)[1]]}}
    assert FlaskRiverML.state(app).backend.get(layout.waiting(MODEL, "new")) is None
    twice = predict_batch(client, [{"features": x, "identifier": "same"}, {"features": x, "identifier": "same"}])
    assert twice.status_code == 409 and "1" in twice.get_json()["errors"]["samples"]
    mixed = predict_batch(client, [{"features": x, "identifier": 12}, {"features": x}])
    assert mixed.status_code == 201
    assert mixed.get_json()["identifiers"][0] == "12" and len(mixed.get_json()["identifiers"][1]) == 36
    assert served(app)[1]["predict"]["n_calls"] == 3

    quiet = make_app(instance_path=app.instance_path + "-quiet", RIVER_ML_GENERATE_IDENTIFIERS=False)
    upload(quiet, regression_model(), "regression")
    response = predict_batch(quiet.test_client(), [{"features": x}, {"features": x}])
    assert response.status_code == 200 and response.get_json()["identifiers"] == [None, None]
    named = predict_batch(quiet.test_client(), [{"features": x}, {"features": x, "identifier": "one"}])
    assert named.status_code == 201 and named.get_json()["identifiers"] == [None, "one"]


# --- a bad sample refuses the whole batch --------------------------------------------------------


def _bad_samples() -> dict[str, tuple[int, Any, str]]:
    """name -> (the index of the bad sample, the sample, a fragment of its error)."""
    x, y = next(iter(datasets.TrumpApproval()))
    return {
        "features of a bad type": (3, {"features": "oops", "ground_truth": y}, "features must be a dictionary"),
        "a NaN feature": (2, {"features": {**x, "ordinal_date": NAN}, "ground_truth": y}, "nan"),
        "a NaN ground truth": (4, {"features": x, "ground_truth": NAN}, "nan"),
        "no features": (1, {"ground_truth": y}, "Give the features"),
        "an unknown identifier": (5, {"identifier": "never-made", "ground_truth": y}, "never-made"),
        "too many features": (0, {"features": {f"f{i}": 1.0 for i in range(9)}, "ground_truth": y}, "more than 8"),
        "a ground truth that is no number": (3, {"features": x, "ground_truth": "high"}, "must be a number"),
        "an unknown field": (2, {"features": x, "ground_truth": y, "weight": 2}, "weight"),
        "a bad identifier": (1, {"identifier": "", "ground_truth": y}, "identifier must be"),
        "neither a pair nor a sample": (4, 42, "pair or a dictionary"),
    }


BAD = _bad_samples()


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_batch_with_one_bad_sample_changes_nothing(make_app, backend_name, case):
    """The batch is refused whole, its error naming the bad sample's index, in process and over
    HTTP; the log, the metrics, the stats and the predictions waiting for labels stay as they were
    (the batch's other samples label two of them)."""
    index, bad, fragment = BAD[case]
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_MAX_FEATURES=8)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(12))
    upload(app, regression_model(), "regression")
    with app.app_context():
        river_ml.learn_batch(MODEL, samples[:6])
        river_ml.predict_batch([x for x, _ in samples[6:8]], MODEL, identifiers=["w-0", "w-1"])
    before = (log_of(app), *served(app))
    batch = batch_of(samples[8:12]) + [
        {"identifier": "w-0", "ground_truth": 1.0},
        {"identifier": "w-1", "ground_truth": 2.0},
    ]
    batch.insert(index, bad)

    with app.app_context(), pytest.raises((InvalidInput, IdentifierNotFound)) as refused:
        river_ml.learn_batch(MODEL, batch)
    assert refused.value.sample == index and fragment in refused.value.message
    assert refused.value.message.startswith(f"Sample {index} of the batch: ")
    if "NaN" not in case:  # NaN is no JSON: the body itself is refused
        response = learn_batch(app.test_client(), batch)
        assert response.status_code == 400, response.get_json()
        errors = response.get_json()["errors"]["samples"]
        assert list(errors) == [str(index)] and fragment in errors[str(index)][0], errors
    else:
        body = json.dumps({"model": MODEL, "samples": batch})
        response = app.test_client().post("/api/learn/batch/", data=body, content_type="application/json")
        assert response.status_code == 400 and "NaN" in response.get_json()["message"]
    assert (log_of(app), *served(app)) == before
    with app.app_context():
        for identifier, (_, y) in zip(("w-0", "w-1"), samples[6:8], strict=True):
            assert river_ml.label(y, identifier, MODEL) == "Successful label."


def test_a_predict_batch_with_one_bad_sample_keeps_nothing(app):
    client = app.test_client()
    upload(app, regression_model(), "regression")
    x, _ = next(iter(datasets.TrumpApproval()))
    for bad, where in [
        ({"features": "oops"}, "features must be"),
        ({"identifier": "no-features"}, "A sample is an object with features"),
        ({"features": x, "label": 1}, "Unknown field"),
        ({"features": x, "identifier": ""}, "identifier must be"),
        ({"features": {f"f{i}": 1 for i in range(1001)}}, "more than 1000"),
    ]:
        response = predict_batch(client, [{"features": x, "identifier": "a"}, bad])
        assert response.status_code == 400, response.get_json()
        assert where in response.get_json()["errors"]["samples"]["1"][0], response.get_json()
    with app.app_context(), pytest.raises(InvalidInput, match="Sample 1 of the batch: features holds nan"):
        FlaskRiverML().predict_batch([x, {**x, "you_gov": NAN}], MODEL, identifiers=["a", "b"])
    assert FlaskRiverML.state(app).backend.keys(layout.waiting(MODEL)) == []
    assert served(app)[1]["predict"]["n_calls"] == 0


# --- other processes, restarts and snapshots replay a batch --------------------------------------


@pytest.mark.parametrize("backend_name", ["shelve", "redis"])
def test_other_processes_restarts_and_snapshots_learn_a_batch_as_its_sender(make_app, tmp_path, backend_name):
    """Two apps on one store (two processes): batches and single learns sent to the first are
    learnt the same by the second, which held a replica before, and by a third started after,
    which loads the last snapshot and replays the log. Snapshots are due by samples: every 40
    here, so batches of 30 take one every second batch."""
    shared = tmp_path / "shared"
    config = {"RIVER_ML_STORAGE_BACKEND": backend_name, "RIVER_ML_SNAPSHOT_EVERY": 40}
    first, second = make_app(instance_path=shared, **config), make_app(instance_path=shared, **config)
    river_ml = FlaskRiverML()
    samples = list(datasets.Phishing().take(125))
    probes = [x for x, _ in datasets.Phishing().take(135)][125:]
    upload(first, binary_model(), "binary")
    with second.app_context():
        river_ml.predict(probes[0], MODEL)
    backend = FlaskRiverML.state(first).backend
    with first.app_context():
        for start in range(0, 120, 30):
            assert river_ml.learn_batch(MODEL, samples[start : start + 30]) == 30
            assert int(backend.get(layout.snapshot_seq(MODEL)) or 0) == [0, 2, 2, 4][start // 30]
        river_ml.learn(MODEL, ground_truth=samples[120][1], features=samples[120][0])
        assert river_ml.learn_batch(MODEL, samples[121:]) == 4
    assert [seq for seq, _ in log_of(first)] == [4, 5, 6]
    third = make_app(instance_path=shared, **config)

    local = binary_model()
    expected = prequential("binary", local, samples)
    answers = []
    for app in (first, second, third):
        with app.app_context():
            assert_close(river_ml.metrics(MODEL), expected)
            answers.append(river_ml.predict_batch(probes, MODEL)["predictions"])
            assert river_ml.stats(MODEL)["learn"]["n_calls"] == len(samples)
    assert answers[0] == answers[1] == answers[2]
    for x, value in zip(probes, answers[0], strict=True):
        assert same_prediction(value, local.predict_proba_one(x))


def test_a_sample_the_model_fails_on_fails_the_batch_in_every_process(make_app, tmp_path):
    """A model whose Rust quantile learnt a NaN panics at the next number: a batch holding such a
    sample is refused with ModelFailed naming it, the whole record is skipped by its sender, by a
    process that held a replica before and by one that replays the log, the predictions it
    labelled wait again, and nothing is timed."""
    shared = tmp_path / "shared"
    first, second = make_app(instance_path=shared), make_app(instance_path=shared)
    river_ml = FlaskRiverML()
    poisoned = rust_model()
    poisoned["RobustScaler"].learn_one({"x": NAN})  # the scaler only: the regression stays finite
    upload(first, poisoned, "regression")
    with second.app_context():
        river_ml.predict({"z": 1.0}, MODEL)
    with first.app_context():
        river_ml.predict({"z": 4.0}, MODEL, identifier="kept")
        batch = [({"z": 2.0}, 1.0), {"identifier": "kept", "ground_truth": 3.0}, ({"x": 2.0}, 1.0), ({"z": 3.0}, 4.0)]
        with pytest.raises(ModelFailed, match="Sample 2 of the batch: .*PanicException") as failed:
            river_ml.learn_batch(MODEL, batch)
        assert failed.value.sample == 2 and list(failed.value.errors["samples"]) == ["2"]
        assert len(log_of(first)) == 1
        assert river_ml.stats(MODEL)["learn"]["n_calls"] == 0  # timed with its record, then taken back
        after = [({"z": 0.5}, 2.5), ({"z": 1.5}, 0.5)]
        assert river_ml.learn_batch(MODEL, after) == 2
        assert river_ml.label(5.0, "kept", MODEL) == "Successful label."
    local = poisoned
    for x, y in [*after, ({"z": 4.0}, 5.0)]:
        local.learn_one(x, y)
    probes = [{"z": 0.0}, {"z": 2.0}, {"z": 5.0}]
    third = make_app(instance_path=shared)
    for app in (first, second, third):
        with app.app_context():
            served_values = [river_ml.predict(x, MODEL)["prediction"] for x in probes]
            assert served_values == pytest.approx([local.predict_one(x) for x in probes], abs=1e-9)
            assert river_ml.stats(MODEL)["learn"]["n_calls"] == len(after)


# --- limits, views, authentication and rate limits ----------------------------------------------


def test_a_batch_over_the_size_limit_is_413(make_app):
    """RIVER_ML_BATCH_MAX_SAMPLES bounds a batch (413 saying the limit, nothing learnt); in
    process, an endless stream is read no further than one past the limit."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_BATCH_MAX_SAMPLES=5)
    client = app.test_client()
    upload(app, regression_model(), "regression")
    samples = batch_of(list(datasets.TrumpApproval().take(6)))
    for response in (
        learn_batch(client, samples),
        predict_batch(client, [{"features": s["features"]} for s in samples]),
    ):
        assert response.status_code == 413 and response.mimetype == "application/json"
        message = response.get_json()["message"]
        assert "holds 6 samples" in message and "5 at most (RIVER_ML_BATCH_MAX_SAMPLES)" in message, message
    assert learn_batch(client, samples[:5]).get_json() == {"learned": 5}

    def endless() -> Iterator[tuple[dict, float]]:
        while True:
            yield {"x": 1.0}, 2.0

    with app.app_context(), pytest.raises(TooLarge, match="5 at most"):
        FlaskRiverML().learn_batch(MODEL, endless())
    assert len(log_of(app)) == 1 and served(app)[1]["learn"]["n_calls"] == 5


def test_a_thousand_phishing_samples_fit_the_default_body_limit(make_app):
    """The default RIVER_ML_JSON_MAX_BYTES (1 MiB) holds a batch of 1,000 Phishing samples, the
    default RIVER_ML_BATCH_MAX_SAMPLES; a larger body is refused with 413 before it is read."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    assert app.config["RIVER_ML_BATCH_MAX_SAMPLES"] == 1000
    client = app.test_client()
    upload(app, binary_model(), "binary")
    samples = batch_of(list(datasets.Phishing().take(1000)))
    assert len(json.dumps({"model": MODEL, "samples": samples})) < app.config["RIVER_ML_JSON_MAX_BYTES"] // 4
    assert learn_batch(client, samples).get_json() == {"learned": 1000}
    padded = [{**sample, "features": {**sample["features"], "padding": "p" * 1100}} for sample in samples]
    response = learn_batch(client, padded)
    assert response.status_code == 413 and response.mimetype == "application/json"
    assert served(app)[1]["learn"]["n_calls"] == 1000


def test_batch_views_are_enabled_protected_and_rate_limited_as_the_single_ones(make_app):
    """learn_batch and predict_batch are views of their own for RIVER_ML_API_VIEWS_ENABLED and
    RIVER_ML_AUTHENTICATED_VIEWS; a batch is one request against the rate limit."""
    sample = batch_of(list(datasets.TrumpApproval().take(1)))
    only_single = make_app(
        instance_path=make_app().instance_path + "-single",
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_API_VIEWS_ENABLED=["learn", "predict"],
    )
    upload(only_single, regression_model(), "regression")
    for path in ("/api/learn/batch/", "/api/predict/batch/"):
        assert only_single.test_client().post(path, json={"model": MODEL, "samples": sample}).status_code == 404

    protected = make_app(
        instance_path=only_single.instance_path + "-auth",
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_DISABLE_AUTHENTICATION=False,
        RIVER_ML_AUTHENTICATED_VIEWS=["learn_batch"],
    )
    upload(protected, regression_model(), "regression")
    assert learn_batch(protected.test_client(), sample).status_code == 401
    assert predict_batch(protected.test_client(), [{"features": sample[0]["features"]}]).status_code == 201

    limited = make_app(
        instance_path=only_single.instance_path + "-limited",
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_VIEW_RATE_LIMIT_DISABLE=False,
        RIVER_ML_VIEW_RATE_LIMIT="3/minute",
    )
    upload(limited, regression_model(), "regression")
    client = limited.test_client()
    assert learn_batch(client, sample * 10).status_code == 201
    assert predict_batch(client, [{"features": sample[0]["features"]}] * 10).status_code == 201
    assert client.post("/api/learn/", json={"model": MODEL, **sample[0]}).status_code == 201
    refused = learn_batch(client, sample)
    assert refused.status_code == 429 and "Retry-After" in refused.headers


# --- a server killed with its batch --------------------------------------------------------------


def server_env() -> dict[str, str]:
    """The example app, allowed to unpickle the tests' slow model, which it finds on the path."""
    return {
        "FLASK_RIVER_ML_UNPICKLE_ALLOWED_MODULES": json.dumps(["examples", "slow_model"]),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def downloaded(url: str, name: str = MODEL) -> Any:
    response = requests.get(f"{url}/api/model/download/{name}/", timeout=120)
    assert response.status_code == 200, response.text
    return dill.loads(response.content)


def store_log(folder: Path, name: str = MODEL) -> list[tuple[int, bytes]]:
    """The log of the server's shelve store, read as another process on the machine would."""
    store = create_backend(f"sqlite:///{folder / 'instance' / 'river_ml.shelve'}", root="unused", prefix="unused")
    try:
        return store.read(layout.log(name))
    finally:
        store.close()


@pytest.mark.gunicorn
def test_a_batch_answered_before_a_sigkill_is_learnt_after_the_restart(tmp_path):
    """The whole server is killed with SIGKILL right after a batch's 201 (no exit snapshot): the
    restarted server replays the batch's record, and serves what a local model trained on the
    batch predicts, with the batch's metrics and stats."""
    samples = list(datasets.TrumpApproval().take(300))
    probes = [x for x, _ in datasets.TrumpApproval().take(310)][300:]
    with serve(tmp_path, workers=2, new_session=True) as server:
        response = requests.post(f"{server.url}/api/model/regression/{MODEL}/", data=dill.dumps(regression_model()))
        assert response.status_code == 201, response.text
        body = {"model": MODEL, "samples": batch_of(samples)}
        response = requests.post(f"{server.url}/api/learn/batch/", json=body, timeout=60)
        assert response.status_code == 201 and response.json() == {"learned": len(samples)}
        server.kill()
    assert len(store_log(tmp_path)) == 1
    local = regression_model()
    expected = prequential("regression", local, samples)
    with serve(tmp_path, workers=2) as server:
        answer = requests.post(
            f"{server.url}/api/predict/batch/", json={"model": MODEL, "samples": [{"features": x} for x in probes]}
        )
        assert answer.status_code == 201
        assert answer.json()["predictions"] == pytest.approx([local.predict_one(x) for x in probes], abs=1e-9)
        assert_close(requests.get(f"{server.url}/api/metrics/", params={"model": MODEL}).json(), expected)
        stats = requests.get(f"{server.url}/api/stats/", params={"model": MODEL}).json()
        assert stats["learn"]["n_calls"] == len(samples)
        assert "Traceback" not in server.log_text()


def send_partly(url: str, body: bytes, sent: int) -> socket.socket:
    """A POST of ``body`` to the learn batch route whose first ``sent`` bytes only are sent."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    head = (
        f"POST /api/learn/batch/ HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body[:sent])
    return connection


@pytest.mark.gunicorn
def test_a_batch_killed_before_its_answer_is_wholly_in_or_wholly_out(tmp_path):
    """A model that takes 20 ms over each sample learns batches of 60: the server is killed with
    SIGKILL once while a batch's body is still being sent, and once while a batch is being learnt
    (its record is in the store's log, its answer not yet sent). After each restart the model has
    learnt none or all of that batch: never part of it."""
    count = 60
    body = json.dumps({"model": MODEL, "samples": batch_of(list(datasets.TrumpApproval().take(count)))}).encode()
    env = server_env()
    with serve(tmp_path, env, workers=1, new_session=True, app="slow_model:app") as server:
        response = requests.post(f"{server.url}/api/model/regression/{MODEL}/", data=dill.dumps(SlowRegressor()))
        assert response.status_code == 201, response.text
        connection = send_partly(server.url, body, len(body) // 2)
        time.sleep(0.5)  # the worker reads the body it is given, and waits for the rest
        server.kill()
        connection.close()
    assert store_log(tmp_path) == []
    with serve(tmp_path, env, workers=1, new_session=True, app="slow_model:app") as server:
        assert getattr(downloaded(server.url), "learnt", 0) == 0  # wholly out

        answers: list[int] = []

        def send() -> None:
            try:
                answers.append(requests.post(f"{server.url}/api/learn/batch/", data=body, timeout=60).status_code)
            except requests.ConnectionError:
                pass  # the server was killed before it answered

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + 20
        while not store_log(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(store_log(tmp_path)) == 1, "the batch's record never reached the log"
        time.sleep(0.2)  # a few of its samples are learnt: the kill falls halfway through them
        assert not answers, "the batch was answered before the kill"
        server.kill()
        sender.join(timeout=10)
    with serve(tmp_path, env, workers=1, app="slow_model:app") as server:
        assert downloaded(server.url).learnt == count  # wholly in
        stats = requests.get(f"{server.url}/api/stats/", params={"model": MODEL}).json()
        # Its timings were written with its record: it is counted whole, as it is learnt.
        assert stats["learn"]["n_calls"] == count

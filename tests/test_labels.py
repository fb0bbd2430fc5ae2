"""Labels as the server spells them, and metrics never fed.

A binary prediction comes back over JSON keyed ``"true"``/``"false"``; a classifier reads a
label, a ground truth or a caller's prediction given as the string JSON writes for one of its
classes as that class, in process and over HTTP, before the learn is recorded. A string that
is a class itself, or that names none, stays what it is. A metric that was never fed reads
None (JSON null), not its initial value.

Served models are checked against the same river model trained locally on the classes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from river import datasets, linear_model, metrics, multiclass, naive_bayes, preprocessing, tree
from riverapi.main import Client
from servers import serve
from test_flavors import FLAVOR_METRICS

from flask_river_ml import FlaskRiverML
from flask_river_ml.encoding import jsonable
from flask_river_ml.flavors import metric_values
from flask_river_ml.flavors.base import fed
from flask_river_ml.flavors.classes import Classes

PHISHING = list(datasets.Phishing().take(60))
BINARY_METRICS = tuple(FLAVOR_METRICS["binary"])
MULTICLASS_METRICS = tuple(FLAVOR_METRICS["multiclass"])
TOLERANCE = 1e-9


def binary_model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def one_vs_one() -> Any:
    """A multiclass model without probabilities: CrossEntropy has nothing to be fed."""
    return multiclass.OneVsOneClassifier(linear_model.LogisticRegression())


def spelled(label: Any) -> str:
    """The string the server's JSON writes for a class (``True`` -> ``"true"``)."""
    return next(iter(json.loads(json.dumps(jsonable({label: 0})))))


def assert_close(served: Any, local: Any) -> None:
    if isinstance(local, dict):
        assert list(served) == list(local), (served, local)
        for key, value in local.items():
            assert math.isclose(served[key], value, rel_tol=0.0, abs_tol=TOLERANCE), (key, served, local)
    else:
        assert math.isclose(served, local, rel_tol=0.0, abs_tol=TOLERANCE), (served, local)


class Prequential:
    """The binary flavor's metrics computed locally the way the server scores them."""

    def __init__(self) -> None:
        self.metrics = {name: getattr(metrics, name)() for name in BINARY_METRICS}

    def score(self, y: bool, proba: dict[bool, float]) -> None:
        if not proba:
            return
        for metric in self.metrics.values():
            metric.update(y, max(proba, key=proba.__getitem__) if metric.requires_labels else proba)

    def assert_served(self, served: dict[str, Any]) -> None:
        assert set(served) == set(self.metrics)
        for name, metric in self.metrics.items():
            assert isinstance(served[name], float), (name, served)
            assert math.isclose(served[name], metric.get(), rel_tol=0.0, abs_tol=TOLERANCE), (name, served)


@pytest.fixture
def memory_app(make_app) -> Iterator[Any]:
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    with app.app_context():
        yield app


# --- reading a string as a class --------------------------------------------------------------


def test_classes_read_exactly_the_string_json_writes():
    """Only the exact JSON key of a class matches: ``True == 1`` in Python, but ``"1"`` is not
    ``True`` and ``"true"`` is not ``1``; a string class is its own, and unknown strings stay."""
    booleans = Classes([False, True])
    assert booleans.read("true") is True
    assert booleans.read("false") is False
    assert booleans.read("1") == "1" and isinstance(booleans.read("1"), str)
    assert booleans.read("True") == "True"

    integers = Classes([0, 1])
    assert integers.read("0") == 0 and type(integers.read("0")) is int
    assert integers.read("1") == 1 and type(integers.read("1")) is int
    assert integers.read("false") == "false"
    assert integers.read("1.0") == "1.0"

    both = Classes([True, 1, "yes"])  # a set would hold one of True and 1
    assert both.read("true") is True
    assert both.read("1") == 1 and type(both.read("1")) is int
    assert both.read("yes") == "yes"

    # A string class wins over any other class JSON writes the same way.
    strings = Classes([1, "1", 2.5])
    assert strings.read("1") == "1" and isinstance(strings.read("1"), str)
    assert strings.read("2.5") == 2.5

    numpy_classes = Classes([np.int64(3)])
    assert numpy_classes.read("3") == 3 and isinstance(numpy_classes.read("3"), np.int64)

    # Values that are not strings are never touched: 0 and False stay what they are.
    assert booleans.read(0) == 0 and type(booleans.read(0)) is int
    assert integers.read(False) is False
    assert booleans.read(None) is None


def test_more_classes_are_asked_for_only_when_a_string_matches_none():
    asked = []

    def more() -> Iterator[Any]:
        asked.append(True)
        yield True

    classes = Classes([False], more())
    assert classes.read("false") is False
    assert classes.read(True) is True
    assert asked == []
    assert classes.read("true") is True
    assert classes.read("other") == "other"
    assert asked == [True]


def test_a_caller_prediction_has_its_keys_read():
    classes = Classes([False, True])
    assert classes.read_prediction({"true": 0.8, "false": 0.2}) == {True: 0.8, False: 0.2}
    assert classes.read_prediction("true") is True
    assert classes.read_prediction({"yes": 1.0}) == {"yes": 1.0}
    # Two keys that would name one class: the dictionary stays as it was sent.
    assert classes.read_prediction({"true": 0.5, True: 0.5}) == {"true": 0.5, True: 0.5}


# --- in process ---------------------------------------------------------------------------------


def test_binary_string_labels_learn_the_classes(river_ml):
    """``learn`` and ``label`` with ``"true"``/``"false"`` train the model on True/False: it
    predicts like a local model trained on the booleans, and the metrics are river's."""
    name = river_ml.add_model(binary_model(), "binary")
    local, scores = binary_model(), Prequential()
    for i, (x, y) in enumerate(PHISHING[:40]):
        local_proba = local.predict_proba_one(x)
        if i % 2:
            result = river_ml.predict(x, name)
            assert_close(result["prediction"], local_proba)
            assert river_ml.label(spelled(y), result["identifier"], name) == "Successful label."
        else:
            assert river_ml.learn(name, ground_truth=spelled(y), features=x) == "Successful learn."
        scores.score(y, local_proba)
        local.learn_one(x, y)
    for x, _ in PHISHING[40:]:
        assert_close(river_ml.predict(x, name)["prediction"], local.predict_proba_one(x))
    scores.assert_served(river_ml.metrics(name))
    # The model holds the classes, never their spellings.
    assert set(river_ml.metrics(name)) == set(BINARY_METRICS)


def test_the_first_label_of_a_fresh_model_finds_its_classes_in_the_waiting_prediction(river_ml):
    """A fresh LogisticRegression learnt nothing and its metrics counted nothing, but the
    prediction kept for the label names ``{False, True}``: ``"true"`` is True."""
    x, _ = PHISHING[0]
    name = river_ml.add_model(binary_model(), "binary")
    result = river_ml.predict(x, name)
    assert result["prediction"] == {False: 0.5, True: 0.5}
    river_ml.label("true", result["identifier"], name)

    local = binary_model()
    local.learn_one(x, True)
    assert_close(river_ml.predict(x, name)["prediction"], local.predict_proba_one(x))
    scores = Prequential()
    scores.score(True, {False: 0.5, True: 0.5})
    scores.assert_served(river_ml.metrics(name))


def test_a_caller_prediction_spelled_by_json_is_read_as_classes(river_ml):
    """A caller's ``{"true": 0.8, "false": 0.2}`` with ground truth ``"true"``, on a model that
    knows nothing yet: its answer on the features names the classes. LogLoss gets the
    probabilities of True, the label metrics True."""
    x, _ = PHISHING[0]
    name = river_ml.add_model(binary_model(), "binary")
    river_ml.learn(name, ground_truth="true", prediction={"true": 0.8, "false": 0.2}, features=x)
    served = river_ml.metrics(name)
    assert served["Accuracy"] == 1.0
    assert math.isclose(served["LogLoss"], -math.log(0.8), rel_tol=1e-12)

    river_ml.learn(name, ground_truth="false", prediction="true", features=x)
    served = river_ml.metrics(name)
    assert served["Accuracy"] == 0.5
    assert served["Precision"] == 0.5

    local = binary_model()
    local.learn_one(x, True)
    local.learn_one(x, False)
    assert_close(river_ml.predict(x, name)["prediction"], local.predict_proba_one(x))


@pytest.mark.parametrize(
    ("classes", "spelling", "read"),
    [((0, 1), "0", 0), ((0, 1), "1", 1), ((False, True), "false", False), ((False, True), "true", True)],
    ids=["int-0", "int-1", "bool-false", "bool-true"],
)
def test_a_falsy_class_spelled_as_a_string_is_learnt_and_scored(river_ml, classes, spelling, read):
    """``"0"`` for a model of classes 0 and 1, ``"false"`` for one of False and True: the class
    is learnt and scored, never taken for a missing label."""
    name = river_ml.add_model(naive_bayes.GaussianNB(), "multiclass")
    for i, label in enumerate(classes * 3):
        river_ml.learn(name, ground_truth=label, features={"a": float(i % 2)})
    before = river_ml.get_model(name).class_counts[read]
    river_ml.learn(name, ground_truth=spelling, features={"a": 0.0})

    counts = river_ml.get_model(name).class_counts
    assert counts[read] == before + 1
    assert set(counts) == set(classes)
    assert all(type(label) is type(read) for label in counts)
    identifier = river_ml.predict({"a": 1.0}, name)["identifier"]
    river_ml.label(spelling, identifier, name)
    assert river_ml.get_model(name).class_counts[read] == before + 2


@pytest.mark.parametrize(
    ("classes", "spelling"),
    [((False, True), "1"), ((False, True), "0"), ((0, 1), "true"), ((0, 1), "false"), (("no", "yes"), "true")],
    ids=["bool-1", "bool-0", "int-true", "int-false", "strings-true"],
)
def test_a_string_that_names_no_class_stays_a_string(river_ml, classes, spelling):
    """``"1"`` is not True (though ``True == 1``), ``"true"`` is not 1: the model learns the
    string as a class of its own."""
    name = river_ml.add_model(naive_bayes.GaussianNB(), "multiclass")
    for i, label in enumerate(classes * 2):
        river_ml.learn(name, ground_truth=label, features={"a": float(i % 2)})
    river_ml.learn(name, ground_truth=spelling, features={"a": 0.5})
    counts = river_ml.get_model(name).class_counts
    assert counts[spelling] == 1
    assert [label for label in counts if isinstance(label, str) and label not in classes] == [spelling]
    assert all(counts[label] == 2 for label in classes)


def test_string_classes_stay_strings(river_ml):
    """A model trained on the strings ``"1"`` and ``"2"`` keeps learning strings."""
    name = river_ml.add_model(tree.HoeffdingTreeClassifier(), "multiclass")
    for i in range(6):
        river_ml.learn(name, ground_truth=str(1 + i % 2), features={"a": float(i % 2)})
    assert river_ml.get_model(name).classes == {"1", "2"}
    identifier = river_ml.predict({"a": 0.0}, name)["identifier"]
    river_ml.label("1", identifier, name)
    assert river_ml.get_model(name).classes == {"1", "2"}


def test_a_multiclass_model_without_probabilities_reads_its_kept_classes(river_ml):
    """OneVsOneClassifier gives no probabilities; the classes it keeps, and those the metrics
    counted, name its int classes."""
    name = river_ml.add_model(one_vs_one(), "multiclass")
    river_ml.learn(name, ground_truth=1, features={"a": 1.0})
    river_ml.learn(name, ground_truth=2, features={"a": -1.0})
    river_ml.learn(name, ground_truth="1", features={"a": 1.0})
    identifier = river_ml.predict({"a": -1.0}, name)["identifier"]
    river_ml.label("2", identifier, name)
    assert river_ml.get_model(name).classes == {1, 2}


def test_the_streams_show_the_class_learnt(memory_app):
    """The learn and label events carry the ground truth as the model learnt it."""
    river_ml = FlaskRiverML()
    name = river_ml.add_model(binary_model(), "binary")
    subscription = FlaskRiverML.state(memory_app).service.events.events.subscribe()
    try:
        x, _ = PHISHING[0]
        river_ml.learn(name, ground_truth="true", features=x)
        identifier = river_ml.predict(x, name)["identifier"]
        river_ml.label("false", identifier, name)
        sent = []
        while len(sent) < 3:
            message = subscription.get(timeout=5)
            assert message is not None, sent
            sent.append(json.loads(message))
    finally:
        subscription.close()
    assert [(m["event"], m["data"].get("ground_truth")) for m in sent] == [
        ("learn", True),
        ("predict", None),
        ("label", False),
    ]


def test_another_process_replays_the_class(make_app, tmp_path):
    """The class is what the log records: a second app on the same store, which replays the
    log into its own replica, predicts like a model trained on the booleans."""
    first = make_app(tmp_path / "shared", RIVER_ML_STORAGE_BACKEND="shelve")
    second = make_app(tmp_path / "shared", RIVER_ML_STORAGE_BACKEND="shelve")
    river_ml = FlaskRiverML()
    local = binary_model()
    with first.app_context():
        name = river_ml.add_model(binary_model(), "binary")
        for x, y in PHISHING[:20]:
            river_ml.learn(name, ground_truth=spelled(y), features=x)
            local.learn_one(x, y)
        served_first = river_ml.metrics(name)
    with second.app_context():
        assert river_ml.metrics(name) == served_first
        for x, _ in PHISHING[20:30]:
            assert_close(river_ml.predict(x, name)["prediction"], local.predict_proba_one(x))


# --- over HTTP (the Flask test client) ----------------------------------------------------------


def test_http_labels_with_the_keys_predictions_come_back_with(app):
    """The binary flow a client writes: predict, take the key that names the truth, label
    with it; learn with ``"false"``/``"true"`` and a caller's prediction spelled by JSON."""
    client = app.test_client()
    assert (
        client.post("/api/model/binary/spelled/", json={"class": "river.linear_model.LogisticRegression"}).status_code
        == 201
    )
    local, scores = linear_model.LogisticRegression(), Prequential()
    for i, (x, y) in enumerate(PHISHING[:30]):
        local_proba = local.predict_proba_one(x)
        if i % 3 == 0:
            response = client.post("/api/predict/", json={"model": "spelled", "features": x})
            assert response.status_code == 201, response.get_json()
            prediction = response.get_json()["prediction"]
            assert set(prediction) == {"false", "true"}
            assert_close(prediction, json.loads(json.dumps(jsonable(local_proba))))
            key = next(key for key in prediction if key == spelled(y))
            payload = {"model": "spelled", "identifier": response.get_json()["identifier"], "label": key}
            response = client.post("/api/label/", json=payload)
            assert response.status_code == 200, response.get_json()
            scores.score(y, local_proba)
        elif i % 3 == 1:
            response = client.post("/api/learn/", json={"model": "spelled", "features": x, "ground_truth": spelled(y)})
            assert response.status_code == 201, response.get_json()
            scores.score(y, local_proba)
        else:
            sent = {"true": 0.9, "false": 0.1}
            payload = {"model": "spelled", "features": x, "ground_truth": spelled(y), "prediction": sent}
            response = client.post("/api/learn/", json=payload)
            assert response.status_code == 201, response.get_json()
            scores.score(y, {True: 0.9, False: 0.1})
        local.learn_one(x, y)
    response = client.get("/api/metrics/", json={"model": "spelled"})
    assert response.status_code == 200
    scores.assert_served(response.get_json())


def test_http_ground_truths_spelled_zero_and_false(app):
    """Over HTTP, ``"0"`` for int classes and ``"false"`` for bool classes are those classes."""
    client = app.test_client()
    for name, classes, spelling in [("ints", (0, 1), "0"), ("bools", (False, True), "false")]:
        response = client.post(f"/api/model/multiclass/{name}/", json={"class": "river.naive_bayes.GaussianNB"})
        assert response.status_code == 201, response.get_json()
        for i, label in enumerate(classes * 2):
            payload = {"model": name, "features": {"a": float(i % 2)}, "ground_truth": label}
            assert client.post("/api/learn/", json=payload).status_code == 201
        payload = {"model": name, "features": {"a": 0.0}, "ground_truth": spelling}
        assert client.post("/api/learn/", json=payload).status_code == 201
        response = client.post("/api/predict/", json={"model": name, "features": {"a": 0.0}})
        assert response.status_code == 201
        payload = {"model": name, "identifier": response.get_json()["identifier"], "label": spelling}
        assert client.post("/api/label/", json=payload).status_code == 200
        with app.app_context():
            counts = FlaskRiverML().get_model(name).class_counts
        assert dict(counts) == {classes[0]: 4, classes[1]: 2}, counts


# --- metrics never fed ----------------------------------------------------------------------------


def test_metrics_of_a_fresh_model_are_null(app):
    """Before anything is scored, every metric is null, in process and in the JSON."""
    client = app.test_client()
    river_ml = FlaskRiverML()
    for flavor, model, names in [
        ("regression", linear_model.LinearRegression(), ("MAE", "RMSE", "SMAPE")),
        ("binary", binary_model(), BINARY_METRICS),
        ("multiclass", naive_bayes.GaussianNB(), MULTICLASS_METRICS),
    ]:
        river_ml.add_model(model, flavor, name=f"fresh-{flavor}")
        assert river_ml.metrics(f"fresh-{flavor}") == dict.fromkeys(names)
        response = client.get("/api/metrics/", query_string={"model": f"fresh-{flavor}"})
        assert response.status_code == 200
        assert response.get_json() == dict.fromkeys(names)
        assert json.loads(response.get_data()) == dict.fromkeys(names)


def test_cross_entropy_of_a_model_without_probabilities_is_null(app):
    """OneVsOneClassifier has no predict_proba_one: CrossEntropy is never fed and reads null,
    not a perfect 0.0, while the label metrics move."""
    client = app.test_client()
    river_ml = FlaskRiverML()
    name = river_ml.add_model(one_vs_one(), "multiclass")
    rows = list(datasets.ImageSegments().take(40))
    local = {metric: getattr(metrics, metric)() for metric in MULTICLASS_METRICS if metric != "CrossEntropy"}
    model = one_vs_one()
    for x, y in rows:
        river_ml.learn(name, ground_truth=y, features=x)
        label = model.predict_one(x)
        if label is not None:
            for metric in local.values():
                metric.update(y, label)
        model.learn_one(x, y)
    served = river_ml.metrics(name)
    assert served["CrossEntropy"] is None
    for metric_name, metric in local.items():
        assert isinstance(served[metric_name], float), (metric_name, served)
        assert math.isclose(served[metric_name], metric.get(), rel_tol=0.0, abs_tol=TOLERANCE), metric_name
    response = client.get("/api/metrics/", json={"model": name})
    assert response.status_code == 200
    assert b'"CrossEntropy":null' in response.get_data().replace(b" ", b"")
    assert response.get_json() == served


def test_a_metric_is_fed_by_its_first_update():
    """What ``fed`` reads: the running mean, the confusion matrix; a wrapper asks what it
    wraps; a metric that keeps its count elsewhere (R2) is reported as it is."""
    unfed = [metrics.MAE(), metrics.LogLoss(), metrics.CrossEntropy(), metrics.Accuracy(), metrics.F1()]
    assert not any(fed(metric) for metric in unfed)
    assert metric_values(unfed) == dict.fromkeys(["MAE", "LogLoss", "CrossEntropy", "Accuracy", "F1"])
    assert fed(metrics.R2())
    assert metric_values([metrics.R2()]) == {"R2": 0.0}
    assert not fed(metrics.ConfusionMatrix())

    mae, log_loss, cross_entropy, accuracy, f1 = unfed
    mae.update(1.0, 1.0)
    log_loss.update(True, {True: 0.5, False: 0.5})
    cross_entropy.update("a", {"a": 1.0})
    accuracy.update(0, 1)
    f1.update(False, False)
    assert all(fed(metric) for metric in unfed)
    # Fed, at values equal to the initial ones: no longer null.
    assert metric_values([mae, accuracy, f1]) == {"MAE": 0.0, "Accuracy": 0.0, "F1": 0.0}
    assert metric_values([cross_entropy])["CrossEntropy"] == pytest.approx(0.0, abs=1e-12)

    wrapped = metrics.multioutput.MacroAverage(metrics.MAE())
    assert not fed(wrapped)


# --- end to end: riverapi against gunicorn -------------------------------------------------------


@pytest.mark.gunicorn
def test_riverapi_labels_with_the_keys_the_server_returns(tmp_path):
    """Through the real client and two gunicorn workers: upload a binary model, predict, label
    each prediction with the key (``"true"``/``"false"``) that names the truth. The metrics move
    off null to river's values, and the model predicts like a local one trained on the booleans."""
    with serve(tmp_path, workers=2) as server:
        cli = Client(server.url, quiet=True)
        name = cli.upload_model(binary_model(), "binary")
        assert cli.metrics(name) == dict.fromkeys(BINARY_METRICS)
        local, scores = binary_model(), Prequential()
        for x, y in PHISHING[:40]:
            local_proba = local.predict_proba_one(x)
            result = cli.predict(name, x)
            assert set(result["prediction"]) == {"true", "false"}
            assert_close(result["prediction"], json.loads(json.dumps(jsonable(local_proba))))
            key = next(key for key in result["prediction"] if key == spelled(y))
            assert cli.label(key, result["identifier"], name) == "Successful label."
            scores.score(y, local_proba)
            local.learn_one(x, y)
        # riverapi's learn sends the ground truth as given: a string too.
        for x, y in PHISHING[40:50]:
            local_proba = local.predict_proba_one(x)
            assert cli.learn(name, x, spelled(y)) == "Successful learn."
            scores.score(y, local_proba)
            local.learn_one(x, y)
        for x, _ in PHISHING[50:]:
            assert_close(
                cli.predict(name, x)["prediction"], json.loads(json.dumps(jsonable(local.predict_proba_one(x))))
            )
        scores.assert_served(cli.metrics(name))
        assert "Traceback" not in server.log_text(), server.log_text()

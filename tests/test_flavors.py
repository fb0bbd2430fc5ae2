"""Flavors through the in-process client.

Every served model is checked against an identical river model trained locally on the same
samples: predictions must match, and the served metrics must equal river metrics computed
prequentially (predict, score, then learn) with river's own evaluation rules. Only river's
bundled datasets are used. The ``river_ml`` fixture runs each test on the memory and the
shelve backend.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import dill
import pytest
from river import base, cluster, datasets, linear_model, metrics, multiclass, naive_bayes, neighbors, preprocessing

import flask_river_ml
from flask_river_ml import IncompatibleModel, InvalidFlavor, InvalidInput, RiverMLError
from flask_river_ml.flavors import (
    FLAVORS,
    Flavor,
    Regression,
    Scored,
    describe,
    get_flavor,
    metric_values,
    model_code,
)

N_TRAIN = 250
N_HELD_OUT = 25
TOLERANCE = 1e-9

#: The metrics docs/flavors.md names for each flavor that has metrics.
FLAVOR_METRICS = {
    "regression": ["MAE", "RMSE", "SMAPE"],
    "binary": ["Accuracy", "LogLoss", "Precision", "Recall", "F1"],
    "multiclass": [
        "Accuracy",
        "CrossEntropy",
        "MacroPrecision",
        "MacroRecall",
        "MacroF1",
        "MicroPrecision",
        "MicroRecall",
        "MicroF1",
    ],
}
ALL_FLAVORS = ("regression", "binary", "multiclass", "cluster", "neighbor", "custom")


# --- models defined here (importable as ``test_flavors``, so both backends can pickle them) ---


class NearestCentroid:
    """A custom model (no river base class): predicts the class whose mean of ``feature`` is closest."""

    def __init__(self, feature: str) -> None:
        self.feature = feature
        self.sums: dict[Any, float] = {}
        self.counts: dict[Any, int] = {}

    def learn_one(self, x: dict, y: Any) -> None:
        self.sums[y] = self.sums.get(y, 0.0) + x[self.feature]
        self.counts[y] = self.counts.get(y, 0) + 1

    def predict_one(self, x: dict) -> Any:
        if not self.counts:
            return None
        return min(self.counts, key=lambda label: abs(self.sums[label] / self.counts[label] - x[self.feature]))


class LearnOnly:
    """An object that learns but cannot predict: no flavor can serve it."""

    def learn_one(self, x: dict, y: Any = None) -> None:
        pass


class ConstantRegressor(base.Regressor):
    """A river regressor that always predicts ``value`` and learns nothing."""

    def __init__(self, value: float = 5.0) -> None:
        self.value = value

    def learn_one(self, x: dict, y: Any) -> None:
        pass

    def predict_one(self, x: dict) -> float:
        return self.value


class ConstantClassifier(base.Classifier):
    """A river binary classifier that always gives ``True`` the probability ``p_true``."""

    def __init__(self, p_true: float = 0.75) -> None:
        self.p_true = p_true

    def learn_one(self, x: dict, y: Any) -> None:
        pass

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        return {False: 1.0 - self.p_true, True: self.p_true}


# --- helpers --------------------------------------------------------------------------------


def scaled_linear_regression() -> Any:
    """The regression model of the tests: ``StandardScaler | LinearRegression``."""
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def scaled_logistic_regression() -> Any:
    """The binary model of the tests: ``StandardScaler | LogisticRegression``."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def scaled_gaussian_nb() -> Any:
    """The multiclass model of the tests: ``StandardScaler | GaussianNB``."""
    return preprocessing.StandardScaler() | naive_bayes.GaussianNB()


def _samples(dataset: Any, n: int = N_TRAIN + N_HELD_OUT) -> tuple[list, list]:
    """The first ``n`` samples of a bundled dataset, split into training and held-out parts."""
    rows = list(itertools.islice(dataset, n))
    return rows[:N_TRAIN], rows[N_TRAIN:]


def _assert_same_prediction(served: Any, local: Any) -> None:
    """Equal, within ``TOLERANCE`` for floats and for dictionaries of probabilities."""
    if isinstance(local, dict):
        assert isinstance(served, dict)
        assert list(served) == list(local)
        for key, value in local.items():
            assert math.isclose(served[key], value, rel_tol=0.0, abs_tol=TOLERANCE), (key, served, local)
    elif isinstance(local, float):
        assert isinstance(served, float)
        assert math.isclose(served, local, rel_tol=0.0, abs_tol=TOLERANCE), (served, local)
    else:
        assert served == local
        assert type(served) is type(local)


def _prequential(model: Any, flavor: str, rows: list) -> dict[str, metrics.base.Metric]:
    """River's metrics for ``flavor`` computed locally: predict, score, learn, sample after sample.

    River's own rules (``evaluate.progressive_val_score``): label metrics get ``predict_one``
    (for a binary classifier the argmax of ``predict_proba_one``), probability metrics get
    ``predict_proba_one``; a ``None`` or ``{}`` prediction is not scored.
    """
    local = {name: getattr(metrics, name)() for name in FLAVOR_METRICS[flavor]}
    for x, y in rows:
        label = model.predict_one(x)
        proba = model.predict_proba_one(x) if flavor != "regression" else None
        for metric in local.values():
            y_pred = label if getattr(metric, "requires_labels", True) else proba
            if y_pred is not None and y_pred != {}:
                metric.update(y, y_pred)
        model.learn_one(x, y)
    return local


def _assert_metrics_equal(
    served: dict[str, Any], local: dict[str, metrics.base.Metric], unfed: tuple[str, ...] = ()
) -> None:
    """The served values are exactly the local metrics (within ``TOLERANCE``), no more, no less;
    those named ``unfed`` were never fed and are None."""
    assert sorted(served) == sorted(local)
    for name, metric in local.items():
        if name in unfed:
            assert served[name] is None, (name, served)
            continue
        assert isinstance(served[name], float), (name, served[name])
        assert math.isclose(served[name], metric.get(), rel_tol=0.0, abs_tol=TOLERANCE), (name, served, metric)


# --- 1. each flavor predicts what the same river model predicts -----------------------------


def _served_and_local(river_ml, make_model, flavor: str, train: list) -> tuple[str, Any]:
    """Upload one fresh model as ``flavor``, build another locally; train both on ``train``."""
    local = make_model()
    name = river_ml.add_model(make_model(), flavor)
    for x, y in train:
        river_ml.learn(name, ground_truth=y, features=x)
        local.learn_one(x, y)
    return name, local


def test_regression_predictions_match_river(river_ml):
    """A regression pipeline trained with ``learn`` predicts what the same local pipeline predicts."""
    train, held_out = _samples(datasets.TrumpApproval())
    name, local = _served_and_local(river_ml, scaled_linear_regression, "regression", train)
    for x, _ in held_out:
        _assert_same_prediction(river_ml.predict(x, name)["prediction"], local.predict_one(x))


def test_binary_predictions_match_river(river_ml):
    """A binary classifier is served as ``{label: probability}``, equal to river's ``predict_proba_one``."""
    train, held_out = _samples(datasets.Phishing())
    name, local = _served_and_local(river_ml, scaled_logistic_regression, "binary", train)
    for x, _ in held_out:
        served = river_ml.predict(x, name)["prediction"]
        assert set(served) == {False, True}
        _assert_same_prediction(served, local.predict_proba_one(x))


def test_binary_prediction_is_empty_before_training(river_ml):
    """An untrained classifier without probabilities predicts ``{}`` (``{}`` before training)."""
    name = river_ml.add_model(scaled_gaussian_nb(), "binary")
    x, _ = next(iter(datasets.Phishing()))
    assert river_ml.predict(x, name)["prediction"] == {}


def test_multiclass_predictions_match_river(river_ml):
    """A multiclass classifier is served as its predicted class, river's ``predict_one``."""
    train, held_out = _samples(datasets.ImageSegments())
    name, local = _served_and_local(river_ml, scaled_gaussian_nb, "multiclass", train)
    predictions = []
    for x, _ in held_out:
        served = river_ml.predict(x, name)["prediction"]
        _assert_same_prediction(served, local.predict_one(x))
        predictions.append(served)
    assert len(set(predictions)) > 1, "the held-out samples should exercise more than one class"


def test_cluster_predictions_match_river(river_ml):
    """KMeans learns unsupervised (``ground_truth=None``) and predicts the cluster river predicts."""
    train, held_out = _samples(datasets.TrumpApproval())
    local = cluster.KMeans(n_clusters=3, seed=42)
    name = river_ml.add_model(cluster.KMeans(n_clusters=3, seed=42), "cluster")
    for x, _ in train:
        river_ml.learn(name, ground_truth=None, features=x)
        local.learn_one(x)
    for x, _ in held_out:
        served = river_ml.predict(x, name)["prediction"]
        assert isinstance(served, int)
        _assert_same_prediction(served, local.predict_one(x))
    assert river_ml.metrics(name) == {}


@pytest.mark.parametrize(
    ("make_model", "dataset"),
    [
        (lambda: neighbors.KNNRegressor(n_neighbors=3), datasets.TrumpApproval),
        (lambda: neighbors.KNNClassifier(n_neighbors=3), datasets.Phishing),
    ],
    ids=["KNNRegressor", "KNNClassifier"],
)
def test_neighbor_predictions_match_river(river_ml, make_model, dataset):
    """The neighbor flavor returns what ``predict_one`` of the same local model returns."""
    train, held_out = _samples(dataset())
    name, local = _served_and_local(river_ml, make_model, "neighbor", train)
    for x, _ in held_out:
        _assert_same_prediction(river_ml.predict(x, name)["prediction"], local.predict_one(x))
    assert river_ml.metrics(name) == {}


def test_custom_predictions_match_local_model(river_ml):
    """A plain object with ``learn_one``/``predict_one`` is served as it is."""
    train, held_out = _samples(datasets.ImageSegments())
    local = NearestCentroid("intensity-mean")
    name = river_ml.add_model(NearestCentroid("intensity-mean"), "custom")
    x0, _ = train[0]
    assert river_ml.predict(x0, name)["prediction"] is None
    for x, y in train:
        river_ml.learn(name, ground_truth=y, features=x)
        local.learn_one(x, y)
    predictions = []
    for x, _ in held_out:
        served = river_ml.predict(x, name)["prediction"]
        _assert_same_prediction(served, local.predict_one(x))
        predictions.append(served)
    assert len(set(predictions)) > 1
    assert river_ml.metrics(name) == {}
    assert river_ml.stats(name)["learn"]["n_calls"] == N_TRAIN


# --- 2. metrics equal river's prequential metrics ------------------------------------------


@pytest.mark.parametrize(
    ("flavor", "make_model", "dataset"),
    [
        ("regression", scaled_linear_regression, datasets.TrumpApproval),
        ("binary", scaled_logistic_regression, datasets.Phishing),
        ("multiclass", scaled_gaussian_nb, datasets.ImageSegments),
    ],
    ids=["regression", "binary", "multiclass"],
)
def test_metrics_equal_river_prequential_metrics(river_ml, flavor, make_model, dataset):
    """Every documented metric is reported, null until fed, then moved, and equal to river's
    metric computed prequentially.

    For binary models the label metrics get the argmax of ``predict_proba_one`` and LogLoss the
    probabilities; for multiclass models the label metrics get ``predict_one`` and CrossEntropy
    ``predict_proba_one``; an empty ``{}`` (an untrained GaussianNB) is not scored.
    """
    train, _ = _samples(dataset(), N_TRAIN)
    name = river_ml.add_model(make_model(), flavor)
    initial = river_ml.metrics(name)
    assert sorted(initial) == sorted(FLAVOR_METRICS[flavor])
    for x, y in train:
        river_ml.learn(name, ground_truth=y, features=x)
    local = _prequential(make_model(), flavor, train)

    served = river_ml.metrics(name)
    _assert_metrics_equal(served, local)
    assert initial == dict.fromkeys(FLAVOR_METRICS[flavor])
    for metric_name in FLAVOR_METRICS[flavor]:
        fresh = getattr(metrics, metric_name)().get()
        assert served[metric_name] != fresh, f"{metric_name} did not move off its initial value"
    json.dumps(served, allow_nan=False)


def test_multiclass_cross_entropy_moves(river_ml):
    """CrossEntropy is fed the probabilities of a multiclass model, so it moves."""
    train, _ = _samples(datasets.ImageSegments(), 30)
    name = river_ml.add_model(scaled_gaussian_nb(), "multiclass")
    for x, y in train:
        river_ml.learn(name, ground_truth=y, features=x)
    assert river_ml.metrics(name)["CrossEntropy"] > 0.0


def test_metrics_of_identifier_labels_equal_river(river_ml):
    """Predict then label (the identifier path) scores the stored prediction like a direct learn."""
    train, _ = _samples(datasets.Phishing(), 60)
    name = river_ml.add_model(scaled_logistic_regression(), "binary")
    for x, y in train:
        identifier = river_ml.predict(x, name)["identifier"]
        river_ml.label(y, identifier, name)
    _assert_metrics_equal(river_ml.metrics(name), _prequential(scaled_logistic_regression(), "binary", train))


# --- 3. falsy values are real values --------------------------------------------------------


@pytest.mark.parametrize("zero", [0, 0.0], ids=["int", "float"])
def test_zero_prediction_with_zero_ground_truth_is_scored(river_ml, zero):
    """A fresh LinearRegression predicts ``0.0``; with a ground truth of 0 the sample still counts.

    Such a sample leaves MAE at 0.0, so a second sample with a known prediction reveals the count:
    MAE is (0 + 2) / 2 = 1.0 when the first sample was scored, 2.0 if it was dropped.
    """
    x = {"a": 1.0, "b": -2.0}
    name = river_ml.add_model(linear_model.LinearRegression(), "regression")
    assert river_ml.predict(x, name)["prediction"] == 0.0
    river_ml.learn(name, ground_truth=zero, features=x)
    river_ml.learn(name, ground_truth=0.0, prediction=2.0, features=x)

    local = {metric_name: getattr(metrics, metric_name)() for metric_name in FLAVOR_METRICS["regression"]}
    for metric in local.values():
        metric.update(zero, 0.0)
        metric.update(0.0, 2.0)
    served = river_ml.metrics(name)
    _assert_metrics_equal(served, local)
    assert served["MAE"] == 1.0


@pytest.mark.parametrize(
    ("flavor", "falsy"),
    [("regression", 0), ("regression", 0.0), ("binary", False)],
    ids=["regression-0", "regression-0.0", "binary-False"],
)
def test_falsy_label_is_scored(river_ml, flavor, falsy):
    """``label(0 / 0.0 / False, identifier, name)`` after a predict is a label, not a missing one."""
    x, _ = next(iter(datasets.Phishing()))
    if flavor == "regression":
        model = ConstantRegressor(5.0)
        name = river_ml.add_model(ConstantRegressor(5.0), flavor)
        local = {m: getattr(metrics, m)() for m in FLAVOR_METRICS[flavor]}
        for metric in local.values():
            metric.update(falsy, model.predict_one(x))
    else:
        model = scaled_logistic_regression()
        name = river_ml.add_model(scaled_logistic_regression(), flavor)
        local = _prequential(model, flavor, [(x, falsy)])

    before = river_ml.metrics(name)
    identifier = river_ml.predict(x, name)["identifier"]
    assert river_ml.label(falsy, identifier, name) == "Successful label."
    after = river_ml.metrics(name)
    assert after != before
    _assert_metrics_equal(after, local)


@pytest.mark.parametrize(
    ("flavor", "falsy", "ground_truth"),
    [("regression", 0, 3.0), ("regression", 0.0, 3.0), ("binary", False, False)],
    ids=["regression-0", "regression-0.0", "binary-False"],
)
def test_falsy_caller_prediction_is_scored(river_ml, flavor, falsy, ground_truth):
    """A ``prediction`` of ``0``, ``0.0`` or ``False`` sent with a learn is scored as sent.

    The models predict something else themselves (5.0; True at 0.75), so a prediction taken
    for missing would give other metric values.
    """
    x = {"a": 1.0}
    model = ConstantRegressor(5.0) if flavor == "regression" else ConstantClassifier(0.75)
    name = river_ml.add_model(model, flavor)
    before = river_ml.metrics(name)
    river_ml.learn(name, ground_truth=ground_truth, prediction=falsy, features=x)
    after = river_ml.metrics(name)
    assert after != before

    local = {m: getattr(metrics, m)() for m in FLAVOR_METRICS[flavor]}
    for metric in local.values():
        # A bare label carries no probabilities: LogLoss has nothing to score.
        if getattr(metric, "requires_labels", True):
            metric.update(ground_truth, falsy)
    _assert_metrics_equal(after, local, unfed=("LogLoss",) if flavor == "binary" else ())
    if flavor == "regression":
        assert after["MAE"] == 3.0
    else:
        assert after["Accuracy"] == 1.0
        assert after["LogLoss"] is before["LogLoss"] is None


@pytest.mark.parametrize("ground_truth", [0, 0.0, False], ids=["0", "0.0", "False"])
def test_falsy_ground_truth_is_scored_by_learn(river_ml, ground_truth):
    """``learn(ground_truth=0 / 0.0 / False)`` is supervised and scored (the server predicts first)."""
    x = {"a": 1.0}
    flavor = "binary" if ground_truth is False else "regression"
    model = ConstantClassifier(0.75) if flavor == "binary" else ConstantRegressor(5.0)
    name = river_ml.add_model(model, flavor)
    before = river_ml.metrics(name)
    river_ml.learn(name, ground_truth=ground_truth, features=x)
    after = river_ml.metrics(name)
    assert after != before
    _assert_metrics_equal(after, _prequential(model, flavor, [(x, ground_truth)]))


# --- 4. non-finite metric values -------------------------------------------------------------


class _MinusInfinity(metrics.MAE):
    """A metric whose value is -inf (no metric of the flavors can go below zero), once fed."""

    def get(self) -> float:
        return float("-inf")


def test_metric_values_renders_non_finite_values_as_strings():
    """``metric_values`` gives ``"inf"``, ``"-inf"`` and ``"nan"``, and finite values unchanged."""
    infinite, not_a_number, finite = metrics.MAE(), metrics.MAE(), metrics.MAE()
    infinite.update(float("inf"), 0.0)
    not_a_number.update(float("inf"), float("inf"))
    finite.update(3.0, 1.0)
    assert math.isinf(infinite.get()) and math.isnan(not_a_number.get())

    assert metric_values([infinite]) == {"MAE": "inf"}
    assert metric_values([not_a_number]) == {"MAE": "nan"}
    minus_infinity = _MinusInfinity()
    minus_infinity.update(1.0, 0.0)
    assert metric_values([minus_infinity]) == {"_MinusInfinity": "-inf"}
    assert metric_values([finite]) == {"MAE": 2.0}
    assert metric_values([]) == {}


def test_non_finite_metrics_through_the_client(river_ml):
    """Finite numbers whose difference overflows make MAE and RMSE infinite and SMAPE nan; all
    come back as strings (an infinite ground truth itself is refused)."""
    name = river_ml.add_model(ConstantRegressor(-1e308), "regression")
    river_ml.learn(name, ground_truth=1e308, features={"a": 1.0})
    served = river_ml.metrics(name)
    assert served == {"MAE": "inf", "RMSE": "inf", "SMAPE": "nan"}
    json.dumps(served, allow_nan=False)


# --- 5. flavor checks --------------------------------------------------------------------------


def test_regressor_uploaded_as_binary_is_incompatible(river_ml):
    """A regressor has no ``predict_proba_one``: the binary flavor refuses it and nothing is stored."""
    with pytest.raises(IncompatibleModel, match="predict_proba_one"):
        river_ml.add_model(linear_model.LinearRegression(), "binary")
    assert river_ml.models() == []


def test_unknown_flavor_lists_the_flavors(river_ml):
    """An unknown flavor raises InvalidFlavor whose message names every flavor."""
    with pytest.raises(InvalidFlavor) as raised:
        river_ml.add_model(linear_model.LinearRegression(), "banana")
    message = str(raised.value)
    assert "banana" in message
    for flavor in ALL_FLAVORS:
        assert flavor in message
    assert river_ml.models() == []


def test_creme_flavor_is_refused(river_ml):
    """``creme`` (which riverapi accepts) is an InvalidFlavor: that library is retired."""
    with pytest.raises(InvalidFlavor, match="creme") as raised:
        river_ml.add_model(linear_model.LinearRegression(), "creme")
    # Not the generic "unknown flavor" answer: the message sends the user to river.
    assert "river" in str(raised.value)
    assert river_ml.models() == []


@pytest.mark.parametrize("flavor", ["custom", "neighbor", "regression"])
def test_object_without_predict_methods_is_incompatible(river_ml, flavor):
    """An object that can learn but not predict is refused, with a message naming a missing method."""
    with pytest.raises(IncompatibleModel, match="predict"):
        river_ml.add_model(LearnOnly(), flavor)
    assert river_ml.models() == []


def test_classifier_uploaded_as_cluster_is_incompatible(river_ml):
    """The cluster flavor serves river clusterers only: a classifier is refused."""
    with pytest.raises(IncompatibleModel, match="Clusterer"):
        river_ml.add_model(linear_model.LogisticRegression(), "cluster")
    assert river_ml.models() == []


def test_clusterer_uploaded_as_regression_is_incompatible(river_ml):
    """A clusterer has ``predict_one`` but is no regressor: river's base class decides."""
    with pytest.raises(IncompatibleModel, match="Regressor"):
        river_ml.add_model(cluster.KMeans(), "regression")


def test_flavor_errors_are_package_errors():
    """InvalidFlavor and IncompatibleModel are errors of the package (400 over HTTP)."""
    for error in (InvalidFlavor, IncompatibleModel, InvalidInput):
        assert issubclass(error, RiverMLError)
        assert error("x").status == 400
    assert flask_river_ml.IncompatibleModel is IncompatibleModel


@pytest.mark.parametrize(
    ("flavor", "make_model"),
    [
        ("cluster", lambda: cluster.KMeans(n_clusters=2, seed=1)),
        ("neighbor", lambda: neighbors.KNNRegressor()),
        ("custom", lambda: NearestCentroid("a")),
    ],
)
def test_flavors_without_metrics_report_empty_metrics(river_ml, flavor, make_model):
    """``metrics`` is ``{}`` for the cluster, neighbor and custom flavors, before and after learning."""
    name = river_ml.add_model(make_model(), flavor)
    assert river_ml.metrics(name) == {}
    for i in range(5):
        ground_truth = None if flavor == "cluster" else float(i % 2)
        river_ml.learn(name, ground_truth=ground_truth, features={"a": float(i)})
    river_ml.predict({"a": 0.5}, name)
    assert river_ml.metrics(name) == {}


def test_every_flavor_accepts_a_suitable_model(river_ml):
    """Each flavor takes the kind of model it is meant for."""
    uploads = {
        "regression": linear_model.LinearRegression(),
        "binary": linear_model.LogisticRegression(),
        "multiclass": naive_bayes.GaussianNB(),
        "cluster": cluster.KMeans(),
        "neighbor": neighbors.KNNClassifier(),
        "custom": NearestCentroid("a"),
    }
    for flavor, model in uploads.items():
        assert river_ml.add_model(model, flavor, name=f"model-{flavor}") == f"model-{flavor}"
    assert river_ml.models() == sorted(f"model-{flavor}" for flavor in uploads)


# --- 6. a regression ground truth must be a number ---------------------------------------------


@pytest.mark.parametrize("ground_truth", ["abc", [1.0], {"y": 1.0}], ids=["str", "list", "dict"])
def test_non_numeric_regression_ground_truth_is_refused(river_ml, ground_truth):
    """``learn`` with a non-numeric regression ground truth raises InvalidInput and changes nothing."""
    train, held_out = _samples(datasets.TrumpApproval(), 40)
    name = river_ml.add_model(scaled_linear_regression(), "regression")
    for x, y in train[:30]:
        river_ml.learn(name, ground_truth=y, features=x)
    before_predictions = [river_ml.predict(x, name)["prediction"] for x, _ in held_out]
    before_metrics = river_ml.metrics(name)

    with pytest.raises(InvalidInput):
        river_ml.learn(name, ground_truth=ground_truth, features=train[30][0])

    assert [river_ml.predict(x, name)["prediction"] for x, _ in held_out] == before_predictions
    assert river_ml.metrics(name) == before_metrics


def test_non_numeric_regression_label_is_refused_and_prediction_keeps_waiting(river_ml):
    """``label("abc", ...)`` raises InvalidInput, changes nothing, and a later numeric label works."""
    train, held_out = _samples(datasets.TrumpApproval(), 40)
    name = river_ml.add_model(scaled_linear_regression(), "regression")
    for x, y in train[:30]:
        river_ml.learn(name, ground_truth=y, features=x)
    before_predictions = [river_ml.predict(x, name)["prediction"] for x, _ in held_out]
    before_metrics = river_ml.metrics(name)

    x, y = train[30]
    identifier = river_ml.predict(x, name)["identifier"]
    with pytest.raises(InvalidInput):
        river_ml.label("abc", identifier, name)
    assert [river_ml.predict(x, name)["prediction"] for x, _ in held_out] == before_predictions
    assert river_ml.metrics(name) == before_metrics

    assert river_ml.label(y, identifier, name) == "Successful label."
    assert river_ml.metrics(name) != before_metrics


def test_binary_refuses_a_classifier_without_probabilities(river_ml):
    """A classifier that keeps river's placeholder predict_proba_one cannot be served as binary."""
    for model in (
        multiclass.OneVsOneClassifier(linear_model.LogisticRegression()),
        preprocessing.StandardScaler() | multiclass.OneVsOneClassifier(linear_model.LogisticRegression()),
    ):
        with pytest.raises(IncompatibleModel, match="predict_proba_one"):
            river_ml.add_model(model, "binary")
    assert river_ml.add_model(multiclass.OneVsOneClassifier(linear_model.LogisticRegression()), "multiclass")


# --- model code that raises -------------------------------------------------------------------------


class _Panic(BaseException):
    """Raised as river's Rust code raises a panic: past every ``except Exception``."""


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise _Panic("no message either")


class _Shifty(base.Regressor):
    """A model whose attribute lookups run code that panics."""

    def learn_one(self, x: dict, y: Any) -> None:
        pass

    def predict_one(self, x: dict) -> float:
        return 0.0

    def __getattribute__(self, name: str) -> Any:
        if name == "predict_one":
            raise _Panic("looked up")
        return super().__getattribute__(name)


@pytest.mark.parametrize("raised", [_Panic("called `Option::unwrap()`"), MemoryError(), RecursionError("deep")])
def test_model_code_turns_any_failure_into_model_failed(raised):
    with pytest.raises(flask_river_ml.ModelFailed) as caught, model_code("The model could not learn"):
        raise raised
    assert caught.value.message.startswith(f"The model could not learn: {type(raised).__name__}")
    assert caught.value.status == 400
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("raised", [SystemExit(1), KeyboardInterrupt(), GeneratorExit(), InvalidInput("mine")])
def test_model_code_lets_the_interpreter_exits_and_the_package_errors_through(raised):
    with pytest.raises(type(raised)), model_code("The model could not learn"):
        raise raised


def test_failures_are_described_briefly_whatever_their_message():
    assert describe(_Panic("x" * 5000)) == "_Panic: " + "x" * 291 + "…"
    assert len(describe(_Panic("x" * 5000))) == 300
    assert describe(_Unprintable()) == "_Unprintable"
    assert describe(KeyError("v")) == "KeyError: 'v'"


def test_a_model_whose_lookups_panic_is_refused_at_upload(river_ml):
    with pytest.raises(flask_river_ml.ModelFailed, match="could not be inspected: _Panic: looked up"):
        river_ml.add_model(_Shifty(), "regression")
    assert river_ml.models() == []


# --- 7. flavors are classes: a new one is a subclass, served without editing the package ------------

#: A model of each flavor, the bundled dataset it learns from, and whether it learns its ground truth.
FLAVOR_MODELS: dict[str, tuple[Callable[[], Any], Callable[[], Any], bool]] = {
    "regression": (scaled_linear_regression, datasets.TrumpApproval, True),
    "binary": (scaled_logistic_regression, datasets.Phishing, True),
    "multiclass": (scaled_gaussian_nb, datasets.ImageSegments, True),
    "cluster": (lambda: cluster.KMeans(n_clusters=3, seed=42), datasets.TrumpApproval, False),
    "neighbor": (lambda: neighbors.KNNClassifier(n_neighbors=3), datasets.Phishing, True),
    "custom": (lambda: NearestCentroid("intensity-mean"), datasets.ImageSegments, True),
}


class Ordinal(Flavor):
    """Grades: a river regressor whose prediction is rounded to a whole grade, learning from
    whole grades and scored on them. No such flavor is in the package."""

    river_class = base.Regressor
    metric_factories = (metrics.MAE, metrics.Accuracy)

    def check_target(self, y: Any) -> None:
        if isinstance(y, bool) or not isinstance(y, int):
            raise InvalidInput(f"An {self.name} ground truth is a whole grade, not {y!r}.")

    def _predict(self, model: Any, x: dict) -> Scored:
        grade = round(model.predict_one(x))
        return Scored(grade, grade)


@pytest.fixture
def ordinal() -> Iterator[type[Flavor]]:
    """The ``ordinal`` flavor, defined by naming a subclass of :class:`Ordinal` (as a user of
    the package would define one) and withdrawn afterwards, so other tests never see it."""

    class Served(Ordinal):
        name = "ordinal"

    yield Served
    Served.withdraw()


@pytest.fixture
def twin() -> Iterator[Callable[[str], str]]:
    """``twin(flavor)``: the name of a new flavor that subclasses ``flavor`` and changes nothing
    but its name; every twin is withdrawn afterwards."""
    defined: list[type[Flavor]] = []

    def define(flavor: str) -> str:
        parent = type(FLAVORS[flavor])
        defined.append(type(f"Twin{parent.__name__}", (parent,), {"name": f"{flavor}-twin"}))
        return f"{flavor}-twin"

    yield define
    for cls in defined:
        cls.withdraw()


def _grades(n: int) -> list[tuple[dict, int]]:
    """TrumpApproval with its approval rounded to whole grades."""
    return [(x, round(y)) for x, y in itertools.islice(datasets.TrumpApproval(), n)]


@pytest.mark.parametrize("backend_name", ["shelve", "redis"])
def test_a_subclassed_flavor_is_served_end_to_end(make_app, backend_name, ordinal):
    """The ``ordinal`` flavor, defined only in this module, is uploaded, learns, predicts and is
    scored over HTTP like a built-in one, and a second app on the same store (another process)
    loads its model as that flavor from the snapshot and the log."""
    settings = {"RIVER_ML_STORAGE_BACKEND": backend_name, "RIVER_ML_SNAPSHOT_EVERY": 7}
    client = make_app(**settings).test_client()
    rows = _grades(60)
    train, held_out = rows[:50], rows[50:]

    refused = client.post("/api/model/ordinal/clusters/", data=dill.dumps(cluster.KMeans()))
    assert refused.status_code == 400
    assert "The ordinal flavor serves instances of river.base.Regressor" in refused.get_json()["message"]

    assert client.post("/api/model/ordinal/grades/", data=dill.dumps(scaled_linear_regression())).status_code == 201
    local, scores = scaled_linear_regression(), {"MAE": metrics.MAE(), "Accuracy": metrics.Accuracy()}
    for x, y in train:
        assert client.post("/api/learn/", json={"model": "grades", "features": x, "ground_truth": y}).status_code == 201
        for metric in scores.values():
            metric.update(y, round(local.predict_one(x)))
        local.learn_one(x, y)

    not_a_grade = client.post("/api/learn/", json={"model": "grades", "features": train[0][0], "ground_truth": 41.5})
    assert not_a_grade.status_code == 400
    assert not_a_grade.get_json()["message"] == "An ordinal ground truth is a whole grade, not 41.5."

    other = make_app(**settings).test_client()
    for served_by in (client, other):
        assert served_by.get("/api/models/").get_json() == {"models": ["grades"]}
        _assert_metrics_equal(served_by.get("/api/metrics/", json={"model": "grades"}).get_json(), scores)
        for x, _ in held_out:
            prediction = served_by.post("/api/predict/", json={"model": "grades", "features": x}).get_json()
            _assert_same_prediction(prediction["prediction"], round(local.predict_one(x)))


def test_a_flavor_joins_the_registry_by_naming_itself_and_leaves_it_when_withdrawn(river_ml):
    """Defining a named subclass adds it after the built-in flavors (the unknown-flavor message
    lists it); withdrawing it leaves the registry as it was and its name unknown again."""
    before = list(FLAVORS)

    class Graded(Ordinal):
        name = "graded"

    try:
        assert list(FLAVORS) == [*before, "graded"]
        assert get_flavor("graded").name == "graded" and isinstance(get_flavor("graded"), Graded)
        with pytest.raises(InvalidFlavor, match="choose one of regression, .*, custom, graded[.]"):
            get_flavor("banana")
        assert river_ml.add_model(linear_model.LinearRegression(), "graded", name="g") == "g"
        assert river_ml.service.flavor("g") == "graded"
    finally:
        Graded.withdraw()

    assert list(FLAVORS) == before
    with pytest.raises(InvalidFlavor, match="Unknown flavor 'graded'"):
        river_ml.add_model(linear_model.LinearRegression(), "graded")
    with pytest.raises(LookupError):
        Graded.withdraw()


def test_a_subclass_without_a_name_of_its_own_is_not_served():
    """A family (a base of flavors, named or not) joins nothing and cannot withdraw its parent."""
    before = dict(FLAVORS)

    class Rounded(Regression):
        """Inherits ``regression`` as its name, but is not the regression flavor."""

    assert FLAVORS == before and type(get_flavor("regression")) is Regression
    with pytest.raises(LookupError):
        Rounded.withdraw()
    with pytest.raises(LookupError):
        Ordinal.withdraw()
    assert FLAVORS == before


@pytest.mark.parametrize("taken", [*ALL_FLAVORS, "creme"])
def test_a_taken_or_retired_name_cannot_be_defined_again(taken):
    """A second class under a served name would change how its stored models are served, and a
    retired name keeps its refusal: both are refused when the class is defined."""
    before = dict(FLAVORS)
    with pytest.raises(TypeError, match=f"a flavor called '{taken}' exists already"):
        type("Again", (Flavor,), {"name": taken})
    assert FLAVORS == before
    with pytest.raises(InvalidFlavor, match="creme was merged into river"):
        get_flavor("creme")


def _assert_same_outcome(flavor: str, twin_name: str, method: str, *arguments: Any) -> None:
    """The twin's ``method(*arguments)`` returns what the flavor's returns, or raises the same
    error with the same message but for the name."""

    def outcome(name: str) -> Any:
        try:
            return getattr(get_flavor(name), method)(*arguments)
        except RiverMLError as error:
            return type(error), str(error).replace(twin_name, flavor)

    assert outcome(twin_name) == outcome(flavor), (method, arguments)


@pytest.mark.parametrize("flavor", ALL_FLAVORS)
def test_a_renamed_flavor_behaves_as_its_parent(river_ml, twin, flavor):
    """A subclass that only renames a flavor serves, scores and refuses exactly as it does.

    Were any behaviour chosen by comparing a flavor's name, the twin, whose name no condition
    knows, would fall through to another branch: another prediction, other metrics, another
    check of the model or of the ground truth.
    """
    twin_name = twin(flavor)
    make_model, dataset, supervised = FLAVOR_MODELS[flavor]
    rows = list(itertools.islice(dataset(), 80))
    original = river_ml.add_model(make_model(), flavor)
    renamed = river_ml.add_model(make_model(), twin_name)
    assert river_ml.service.flavor(renamed) == twin_name
    for x, y in rows[:60]:
        for name in (original, renamed):
            river_ml.learn(name, ground_truth=y if supervised else None, features=x)
    for x, _ in rows[60:]:
        assert river_ml.predict(x, renamed)["prediction"] == river_ml.predict(x, original)["prediction"]
    assert river_ml.metrics(renamed) == river_ml.metrics(original)
    assert river_ml.metrics(original).keys() == set(FLAVOR_METRICS.get(flavor, ()))

    # What the metrics are fed, label and probabilities, is the same too, metrics or none.
    trained = river_ml.get_model(original)
    for x, _ in rows[60:]:
        _assert_same_outcome(flavor, twin_name, "predict", trained, x)
    for y in (None, "abc", 1.5, 0, True, [1.0]):
        _assert_same_outcome(flavor, twin_name, "check_target", y)
    for model in (
        linear_model.LinearRegression(),
        linear_model.LogisticRegression(),
        scaled_gaussian_nb(),
        cluster.KMeans(),
        neighbors.KNNRegressor(),
        NearestCentroid("a"),
        LearnOnly(),
        multiclass.OneVsOneClassifier(linear_model.LogisticRegression()),
    ):
        _assert_same_outcome(flavor, twin_name, "check", model)
    for value in ({False: 0.25, True: 0.75}, 3.0, "a", {"a": "b"}):
        _assert_same_outcome(flavor, twin_name, "from_value", value)

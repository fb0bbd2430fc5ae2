"""The two models the benchmarks serve, their data, and the river work the server does per request.

Both models are trained on Phishing samples 0..600 before they are uploaded; the requests'
samples are the rest (600..1250). Phishing ships inside river: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from river import datasets, forest, linear_model, preprocessing

from flask_river_ml.flavors import get_flavor

#: Phishing samples each model is trained on before it is uploaded.
TRAIN_SAMPLES = 600


def phishing() -> tuple[list, list]:
    """Phishing's training samples (0..600) and the samples the requests carry (600..1250)."""
    data = list(datasets.Phishing())
    return data[:TRAIN_SAMPLES], data[TRAIN_SAMPLES:]


def trained(model: Any, samples: Iterable[tuple[dict, Any]]) -> Any:
    for x, y in samples:
        model.learn_one(x, y)
    return model


def make_small(train: list) -> Any:
    return trained(preprocessing.StandardScaler() | linear_model.LogisticRegression(), train)


def make_forest(train: list) -> Any:
    return trained(forest.ARFClassifier(n_models=5, seed=1), train)


MODELS: dict[str, Callable[[list], Any]] = {"small": make_small, "forest": make_forest}
MODEL_DESCRIPTIONS = {
    "small": f"StandardScaler | LogisticRegression trained on {TRAIN_SAMPLES} Phishing samples",
    "forest": f"ARFClassifier(n_models=5, seed=1) trained on {TRAIN_SAMPLES} Phishing samples",
}


def binary_metrics() -> list[Any]:
    """Fresh metrics of the extension's binary flavor, the ones it keeps for every model here."""
    return get_flavor("binary").new_metrics()


def predict(model: Any, x: dict) -> tuple[dict, Any]:
    """A binary model's probabilities and most probable label, as the server computes them."""
    proba = model.predict_proba_one(x)
    return proba, max(proba, key=proba.__getitem__) if proba else None


def learn(model: Any, metric_list: list[Any], x: dict, y: Any) -> None:
    """The river work of one learn of a binary model on the server: predict first, learn, then
    score the prediction (prequential); label metrics get the label, the others the
    probabilities, and a model without probabilities yet is not scored."""
    proba, label = predict(model, x)
    model.learn_one(x, y)
    if proba:
        for metric in metric_list:
            metric.update(y, label if metric.requires_labels else proba)

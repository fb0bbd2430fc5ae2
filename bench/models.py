"""The two models both benchmarks serve: a small pipeline and a 1.6 MB forest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from river import forest, linear_model, preprocessing

#: Phishing samples the forest is trained on before it is uploaded.
TRAIN_SAMPLES = 600


def make_small(_train: list) -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def make_forest(train: list) -> Any:
    model = forest.ARFClassifier(n_models=5, seed=1)
    for x, y in train:
        model.learn_one(x, y)
    return model


MODELS: dict[str, Callable[[list], Any]] = {"small": make_small, "forest": make_forest}
MODEL_DESCRIPTIONS = {
    "small": "StandardScaler | LogisticRegression",
    "forest": f"ARFClassifier(n_models=5, seed=1) trained on {TRAIN_SAMPLES} Phishing samples",
}

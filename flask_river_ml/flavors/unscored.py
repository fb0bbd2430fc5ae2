"""The flavors without metrics: clusterers, neighbour searches and models of one's own.

They learn with or without a ground truth and serve what the model predicts; nothing is
scored, since no metric fits every model they accept.
"""

from __future__ import annotations

from typing import Any

from river import base

from .base import Flavor, Scored


class Cluster(Flavor):
    """A river clusterer: serves the cluster number."""

    name = "cluster"
    river_class = base.Clusterer


class Neighbor(Flavor):
    """Anything with ``learn_one`` and ``predict_one`` (river's neighbour models among them)."""

    name = "neighbor"


class Custom(Flavor):
    """A model of one's own: ``predict_one`` is served when it has one, else ``predict_proba_one``."""

    name = "custom"
    methods = ("learn_one",)
    any_of = ("predict_one", "predict_proba_one")

    def _predict(self, model: Any, x: dict) -> Scored:
        if callable(getattr(model, "predict_one", None)):
            return super()._predict(model, x)
        # Served as it is and not scored: nothing says what a custom model's dictionary means.
        return Scored(model.predict_proba_one(x))

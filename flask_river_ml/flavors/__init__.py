"""Flavors: what kind of model is served, how it predicts and which metrics score it.

A flavor is chosen at upload and checked then, with river's base classes where river has one.
Predictions are made into a :class:`Scored`, which keeps what the caller gets back and what
the metrics need (a label, class probabilities) side by side.

Each flavor is a class (:mod:`.supervised`, :mod:`.unscored`) and joins the registry of
:mod:`.base` by naming itself; another flavor is served by defining another subclass of
:class:`Flavor`, anywhere, before a model of it is uploaded or loaded.
"""

from .base import FLAVORS, Flavor, Scored, describe, get_flavor, metric_values, model_code

# Imported for the flavors they define, in the order the flavors are listed.
from .supervised import Binary, Classification, Multiclass, Regression, Supervised, _has_probabilities
from .unscored import Cluster, Custom, Neighbor

__all__ = [
    "FLAVORS",
    "Binary",
    "Classification",
    "Cluster",
    "Custom",
    "Flavor",
    "Multiclass",
    "Neighbor",
    "Regression",
    "Scored",
    "Supervised",
    "_has_probabilities",
    "describe",
    "get_flavor",
    "metric_values",
    "model_code",
]

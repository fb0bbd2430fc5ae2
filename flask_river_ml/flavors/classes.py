"""Labels as the server spells them: the string JSON makes of a class, read as that class.

A classifier's probabilities come back over JSON keyed by strings (``{True: 0.8}`` is
``{"true": 0.8}``), so a client that labels a prediction with the key it was given sends
``"true"``. A string label is read as the class whose JSON key
(:func:`~flask_river_ml.encoding.json_key`) is exactly that string: ``"true"`` is ``True``
and ``"1"`` is ``1``, never the other way round, although ``True == 1`` in Python.

The classes a model knows are gathered from what it predicted (the probabilities' keys and
the label), from what its metrics counted, and from where river keeps them on the model.
A string that is itself one of them, or that matches none, stays as it is: a string label
of a model with string classes is never changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from river import metrics

from ..encoding import json_key
from ..errors import ModelFailed
from .base import Scored, final_step, model_code

#: Where river classifiers keep the classes they have learnt, as a set or a mapping keyed by
#: class: ``classes`` (HoeffdingTreeClassifier, KNNClassifier, OneVsOneClassifier, the dummy
#: models), ``_classes`` (the Mondrian trees and forests), ``class_counts`` (naive Bayes).
MODEL_ATTRIBUTES = ("classes", "_classes", "class_counts")


def predicted(scored: Scored | None) -> Iterator[Any]:
    """The classes a server-made prediction names: its probabilities' keys and its label."""
    if scored is None:
        return
    yield from scored.proba or ()
    if scored.label is not None:
        yield scored.label


def counted(metric_list: Iterable[metrics.base.Metric]) -> Iterator[Any]:
    """The classes the metrics' confusion matrices have counted. A binary metric counts
    whether a label is its positive value, not the label: its matrix holds booleans of its
    own and is left out."""
    for metric in metric_list:
        cm = getattr(metric, "cm", None)
        if isinstance(cm, metrics.ConfusionMatrix) and not isinstance(metric, metrics.base.BinaryMetric):
            yield from cm.classes


def kept(model: Any) -> Iterator[Any]:
    """The classes the model keeps (see :data:`MODEL_ATTRIBUTES`); in a pipeline, its last step's."""
    predictor = final_step(model)
    for attribute in MODEL_ATTRIBUTES:
        found = getattr(predictor, attribute, None)
        if isinstance(found, set | frozenset | list | tuple | dict):
            yield from found
            return


class Classes:
    """The classes of one model, looked up by their JSON key.

    ``known`` are gathered at once; ``more`` (a lazy iterable: the model's own prediction,
    which costs a predict) only when a string matches none of them. Gathering runs model
    code (an uploaded model's attributes, its prediction): when it fails, what it would have
    added is not known, and a string it would have matched stays a string.
    """

    def __init__(self, known: Iterable[Any], more: Iterable[Any] | None = None) -> None:
        self._by_key: dict[str, Any] = {}
        self._more = more
        self._add(known)

    def read(self, value: Any) -> Any:
        """``value`` as the class it spells, if it is a string that spells one; else as it is."""
        if not isinstance(value, str):
            return value
        if value not in self._by_key and self._more is not None:
            more, self._more = self._more, None
            self._add(more)
        return self._by_key.get(value, value)

    def read_prediction(self, value: Any) -> Any:
        """A caller's prediction with its classes read: a label, or the keys of a dictionary
        of probabilities. A dictionary two of whose keys would name one class stays as it is."""
        if not isinstance(value, dict):
            return self.read(value)
        read = {self.read(key): probability for key, probability in value.items()}
        return read if len(read) == len(value) else value

    def _add(self, classes: Iterable[Any]) -> None:
        """Index ``classes`` by JSON key. A string class is its own key and wins over any
        other class that JSON writes the same way; otherwise the first class found keeps it."""
        strings = []
        with contextlib.suppress(ModelFailed), model_code("The model's classes could not be read"):
            for found in classes:
                if isinstance(found, str):
                    strings.append(found)
                else:
                    self._by_key.setdefault(json_key(found), found)
        self._by_key.update((text, text) for text in strings)


def spells_a_class(value: Any) -> bool:
    """Whether reading ``value`` (a label, or a prediction's dictionary) may change it."""
    return isinstance(value, str) or (isinstance(value, dict) and any(isinstance(key, str) for key in value))

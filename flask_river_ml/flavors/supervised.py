"""The supervised flavors: river regressors and classifiers, scored with river's metrics.

Each learns from a ground truth, so a learn without one is refused before it is logged, and
each keeps the metrics that river's own evaluation would compute for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from numbers import Real
from typing import Any

from river import base, metrics

from ..errors import IncompatibleModel, InvalidInput
from .base import Flavor, Scored, argmax, final_step
from .classes import Classes, counted, kept, predicted, spells_a_class


class Supervised(Flavor):
    """The family of the flavors that need a ground truth to learn."""

    def check_target(self, y: Any) -> None:
        if y is None:
            raise InvalidInput(f"A {self.name} model learns from a ground_truth; none was given.")


class Regression(Supervised):
    """A river regressor: predicts a number, scored against a numeric ground truth."""

    name = "regression"
    river_class = base.Regressor
    metric_factories = (metrics.MAE, metrics.RMSE, metrics.SMAPE)

    def check_target(self, y: Any) -> None:
        super().check_target(y)
        # bool is a Real to Python, not a quantity to a regression metric.
        if isinstance(y, bool) or not isinstance(y, Real):
            raise InvalidInput(f"A {self.name} ground truth must be a number, not {y!r}.")


class Classification(Supervised):
    """The family of the classifier flavors: a label sent as the string JSON makes of a
    class the model knows (``"true"``, ``"1"``) is read as that class (see :mod:`.classes`)."""

    def read_classes(
        self, model: Any, metric_list: list[metrics.base.Metric], x: dict, made: Scored | None, y: Any, prediction: Any
    ) -> tuple[Any, Any]:
        if not (spells_a_class(y) or spells_a_class(prediction)):
            return y, prediction  # nothing to read: the classes are not gathered

        def answer() -> Iterator[Any]:
            yield from predicted(self.predict(model, dict(x)))

        known = itertools.chain(predicted(made), counted(metric_list), kept(model))
        # Without a prediction of its own at hand (the caller sent one), the model's answer
        # on these features names its classes too; asked only if a string matches none.
        classes = Classes(known, None if made is not None else answer())
        return classes.read(y), classes.read_prediction(prediction)


class Binary(Classification):
    """A river classifier with probabilities: serves ``{label: probability}``; the label
    metrics get the most probable class, LogLoss the probabilities."""

    name = "binary"
    methods = ("learn_one", "predict_proba_one")
    river_class = base.Classifier
    metric_factories = (metrics.Accuracy, metrics.LogLoss, metrics.Precision, metrics.Recall, metrics.F1)

    def _check(self, model: Any) -> None:
        self._check_methods(model)
        if not _has_probabilities(model):
            raise IncompatibleModel(
                f"The model does not implement predict_proba_one (or keeps river.base.Classifier's "
                f"placeholder), which the {self.name} flavor needs."
            )
        self._check_class(model)

    def _predict(self, model: Any, x: dict) -> Scored:
        proba = model.predict_proba_one(x)
        return Scored(proba, argmax(proba), proba)


class Multiclass(Classification):
    """A river classifier: serves its class; CrossEntropy gets the probabilities when the
    model has them."""

    name = "multiclass"
    river_class = base.Classifier
    metric_factories = (
        metrics.Accuracy,
        metrics.CrossEntropy,
        metrics.MacroPrecision,
        metrics.MacroRecall,
        metrics.MacroF1,
        metrics.MicroPrecision,
        metrics.MicroRecall,
        metrics.MicroF1,
    )

    def _predict(self, model: Any, x: dict) -> Scored:
        label = model.predict_one(x)
        return Scored(label, label, _probabilities(model, x))


def _has_probabilities(model: Any) -> bool:
    # Every river classifier inherits a predict_proba_one that raises NotImplementedError;
    # in a pipeline, the last step decides.
    predictor = final_step(model)
    return getattr(type(predictor), "predict_proba_one", None) not in (None, base.Classifier.predict_proba_one)


def _probabilities(model: Any, x: dict) -> dict[Any, float] | None:
    try:
        return model.predict_proba_one(x)
    except NotImplementedError:
        return None

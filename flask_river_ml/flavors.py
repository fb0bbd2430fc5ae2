"""Flavors: what kind of model is served, how it predicts and which metrics score it.

A flavor is chosen at upload and checked then, with river's base classes where river has one.
Predictions are made into a :class:`Scored`, which keeps what the caller gets back and what
the metrics need (a label, class probabilities) side by side.

Every call into a model or a metric goes through :func:`model_code`: whatever model code
raises, a Rust panic (a ``BaseException``) included, becomes :class:`ModelFailed`, so no
request can take its worker down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from numbers import Real
from typing import Any

from river import base, compose, metrics

from .encoding import jsonable
from .errors import INTERPRETER_EXITS, IncompatibleModel, InvalidFlavor, InvalidInput, ModelFailed, RiverMLError

#: How much of a model's error message a failure quotes: enough to say what went wrong, not
#: a dump of whatever the model put in it.
_MESSAGE_CHARS = 300


def describe(error: BaseException) -> str:
    """``"PanicException: called `Option::unwrap()` on a `None` value"``, shortened."""
    try:
        text = str(error)
    except INTERPRETER_EXITS:
        raise
    except BaseException:  # noqa: BLE001 - an exception whose __str__ raises is still described
        text = ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


@contextlib.contextmanager
def model_code(failure: str) -> Iterator[None]:
    """Run a call into a model, a metric or their pickles: whatever it raises becomes
    :class:`ModelFailed` with ``failure`` and the error, except the interpreter's own exits
    (a worker asked to stop) and the package's errors, which pass as they are."""
    try:
        yield
    except (*INTERPRETER_EXITS, RiverMLError):
        raise
    except BaseException as error:  # noqa: BLE001 - model code may raise anything, a panic included
        raise ModelFailed(f"{failure}: {describe(error)}") from error


@dataclass(frozen=True)
class Scored:
    """A prediction: ``value`` is returned; ``label`` and ``proba`` feed the metrics."""

    value: Any
    label: Any = None
    proba: dict[Any, float] | None = None


def _argmax(proba: dict[Any, float] | None) -> Any:
    # river's own rule (base.Classifier.predict_one): no probabilities, no label.
    return max(proba, key=proba.__getitem__) if proba else None


@dataclass(frozen=True)
class Flavor:
    """One kind of model.

    ``methods`` are the methods a model must have; ``any_of`` lists alternatives of which it
    needs one; ``base`` is the river class it must be an instance of, if any.
    """

    name: str
    methods: tuple[str, ...] = ("learn_one", "predict_one")
    any_of: tuple[str, ...] = ()
    base: type | None = None
    metric_factories: tuple[Callable[[], metrics.base.Metric], ...] = ()
    numeric_target: bool = False
    #: Supervised flavors: a learn without ground truth is refused before it is logged.
    needs_target: bool = False

    def check(self, model: Any) -> None:
        """Raise :class:`IncompatibleModel` saying what ``model`` lacks for this flavor."""
        # Looking up attributes runs the model's own __getattr__ and properties, if any.
        with model_code("The model could not be inspected"):
            self._check(model)

    def _check(self, model: Any) -> None:
        for method in self.methods:
            if not callable(getattr(model, method, None)):
                raise IncompatibleModel(f"The model does not implement {method}, which the {self.name} flavor needs.")
        if self.any_of and not any(callable(getattr(model, m, None)) for m in self.any_of):
            raise IncompatibleModel(
                f"The model implements none of {', '.join(self.any_of)}; the {self.name} flavor needs one."
            )
        if "predict_proba_one" in self.methods and not _has_probabilities(model):
            raise IncompatibleModel(
                f"The model does not implement predict_proba_one (or keeps river.base.Classifier's "
                f"placeholder), which the {self.name} flavor needs."
            )
        if self.base is not None and not isinstance(model, self.base):
            raise IncompatibleModel(
                f"The {self.name} flavor serves instances of river.base.{self.base.__name__}; "
                f"{type(model).__name__} is not one."
            )

    def new_metrics(self) -> list[metrics.base.Metric]:
        """Fresh metrics for a newly uploaded model."""
        return [factory() for factory in self.metric_factories]

    def check_target(self, y: Any) -> None:
        """Refuse a ground truth that the model or the metrics of this flavor could not use."""
        if y is None:
            if self.needs_target:
                raise InvalidInput(f"A {self.name} model learns from a ground_truth; none was given.")
            return
        if self.numeric_target and (isinstance(y, bool) or not isinstance(y, Real)):
            raise InvalidInput(f"A {self.name} ground truth must be a number, not {y!r}.")

    def predict(self, model: Any, x: dict) -> Scored:
        """Ask ``model`` for its prediction on ``x``, with what the metrics need;
        :class:`ModelFailed` when it raises."""
        with model_code("The model could not predict from these features"):
            return self._predict(model, x)

    def _predict(self, model: Any, x: dict) -> Scored:
        if self.name == "binary":
            proba = model.predict_proba_one(x)
            return Scored(proba, _argmax(proba), proba)
        if self.name == "multiclass":
            label = model.predict_one(x)
            return Scored(label, label, _probabilities(model, x))
        if self.name == "custom" and not callable(getattr(model, "predict_one", None)):
            return Scored(model.predict_proba_one(x))
        value = model.predict_one(x)
        return Scored(value, value)

    def from_value(self, value: Any) -> Scored:
        """A prediction that the caller made and sent with a learn."""
        if isinstance(value, dict):
            if not all(isinstance(p, Real) and not isinstance(p, bool) for p in value.values()):
                raise InvalidInput(f"A prediction given as a dictionary maps labels to probabilities, not {value!r}.")
            return Scored(value, _argmax(value), value)
        return Scored(value, value)

    def score(self, metric_list: list[metrics.base.Metric], y: Any, scored: Scored) -> None:
        """Update the metrics with ground truth ``y`` (prequential: the prediction came first).

        Metrics that need labels get the label, the others the probabilities (river's own
        split in ``metrics.base.Metrics``). Absence is tested with ``is None``: a prediction
        or a label of ``0``, ``False`` or ``0.0`` is scored. An empty probability dictionary
        is a model that has not learnt yet, and is not scored, as in river's evaluation.
        """
        for metric in metric_list:
            # Regression metrics have no requires_labels; they take the value as it is.
            if getattr(metric, "requires_labels", True):
                y_pred = scored.label
            else:
                y_pred = scored.proba or None
            if y_pred is None:
                continue
            try:
                metric.update(y, y_pred)
            except (TypeError, ValueError, KeyError, ArithmeticError):
                # A label of a type the metric cannot compare (a string ground truth against
                # a numeric prediction of a custom model) leaves that metric as it was, the
                # same way on every replica; the model still learns from the sample.
                continue


def _has_probabilities(model: Any) -> bool:
    # Every river classifier inherits a predict_proba_one that raises NotImplementedError;
    # in a pipeline, the last step decides.
    while isinstance(model, compose.Pipeline):
        model = list(model.steps.values())[-1]
    return getattr(type(model), "predict_proba_one", None) not in (None, base.Classifier.predict_proba_one)


def _probabilities(model: Any, x: dict) -> dict[Any, float] | None:
    try:
        return model.predict_proba_one(x)
    except NotImplementedError:
        return None


def metric_values(metric_list: list[metrics.base.Metric]) -> dict[str, Any]:
    """``{MetricName: value}``, with non-finite values as ``"inf"``, ``"-inf"``, ``"nan"``."""
    values = {}
    for metric in metric_list:
        name = type(metric).__name__
        with model_code(f"The metric {name} could not be computed"):
            values[name] = jsonable(metric.get())
    return values


FLAVORS: dict[str, Flavor] = {
    flavor.name: flavor
    for flavor in (
        Flavor(
            "regression",
            base=base.Regressor,
            metric_factories=(metrics.MAE, metrics.RMSE, metrics.SMAPE),
            numeric_target=True,
            needs_target=True,
        ),
        Flavor(
            "binary",
            methods=("learn_one", "predict_proba_one"),
            base=base.Classifier,
            metric_factories=(metrics.Accuracy, metrics.LogLoss, metrics.Precision, metrics.Recall, metrics.F1),
            needs_target=True,
        ),
        Flavor(
            "multiclass",
            base=base.Classifier,
            metric_factories=(
                metrics.Accuracy,
                metrics.CrossEntropy,
                metrics.MacroPrecision,
                metrics.MacroRecall,
                metrics.MacroF1,
                metrics.MicroPrecision,
                metrics.MicroRecall,
                metrics.MicroF1,
            ),
            needs_target=True,
        ),
        Flavor("cluster", base=base.Clusterer),
        Flavor("neighbor"),
        Flavor("custom", methods=("learn_one",), any_of=("predict_one", "predict_proba_one")),
    )
}


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name``; :class:`InvalidFlavor` listing the choices otherwise."""
    if name == "creme":
        raise InvalidFlavor("The creme flavor is not served: creme was merged into river; upload a river model.")
    try:
        return FLAVORS[name]
    except KeyError:
        raise InvalidFlavor(f"Unknown flavor {name!r}; choose one of {', '.join(FLAVORS)}.") from None

"""The base class of the flavors, their registry, and what every flavor shares.

A flavor is a subclass of :class:`Flavor` that names itself: defining it registers its one
instance under that name, and :func:`get_flavor` serves it from then on. What sets a flavor
apart (the models it accepts, how it predicts, the ground truths and metrics it takes) lives
in its own class, so that a new flavor is a new class and no existing one changes. A class
without a ``name`` of its own is a family that flavors share, and is not served.

Every call into a model or a metric goes through :func:`model_code`: whatever model code
raises, a Rust panic (a ``BaseException``) included, becomes :class:`ModelFailed`, so no
request can take its worker down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from types import TracebackType
from typing import Any, ClassVar

from river import compose, metrics

from ..encoding import jsonable
from ..errors import INTERPRETER_EXITS, IncompatibleModel, InvalidFlavor, InvalidInput, ModelFailed, RiverMLError

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


#: What passes through :class:`model_code` as it is.
_PASSING = (*INTERPRETER_EXITS, RiverMLError)


class model_code(contextlib.AbstractContextManager[None]):  # noqa: N801 - reads as the call it wraps
    """Run a call into a model, a metric or their pickles: whatever it raises becomes
    :class:`ModelFailed` with ``failure`` and the error, except the interpreter's own exits
    (a worker asked to stop) and the package's errors, which pass as they are.

    A class rather than a generator: every learn and predict enters several, and a
    generator's context costs several times more to enter and leave."""

    __slots__ = ("failure",)

    def __init__(self, failure: str) -> None:
        self.failure = failure

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is not None and not isinstance(error, _PASSING):
            raise ModelFailed(f"{self.failure}: {describe(error)}") from error


@dataclass(slots=True)
class Scored:
    """A prediction: ``value`` is returned; ``label`` and ``proba`` feed the metrics."""

    value: Any
    label: Any = None
    proba: dict[Any, float] | None = None


def final_step(model: Any) -> Any:
    """The estimator that makes a pipeline's predictions: its last step, nested pipelines
    included; any other model is its own. What a pipeline is follows from it, as river reads
    it (``Pipeline._supervised``)."""
    while isinstance(model, compose.Pipeline):
        model = list(model.steps.values())[-1]
    return model


def argmax(proba: dict[Any, float] | None) -> Any:
    """The most probable label; river's own rule (``base.Classifier.predict_one``): no
    probabilities, no label."""
    return max(proba, key=proba.__getitem__) if proba else None


#: The updates of river's classification metrics that go to the metric's confusion matrix.
_COUNTED_UPDATES = (metrics.base.ClassificationMetric.update, metrics.base.BinaryMetric.update)


def metric_values(metric_list: list[metrics.base.Metric]) -> dict[str, Any]:
    """``{MetricName: value}``, with non-finite values as ``"inf"``, ``"-inf"``, ``"nan"``,
    and None for a metric never fed (see :func:`fed`)."""
    values = {}
    for metric in metric_list:
        name = type(metric).__name__
        with model_code(f"The metric {name} could not be computed"):
            values[name] = jsonable(metric.get()) if fed(metric) else None
    return values


def fed(metric: Any) -> bool:
    """Whether ``metric`` has been updated, read from its own state; the initial value of one
    never fed (a CrossEntropy of 0.0 for a model without probabilities) is no score.

    River keeps no count common to all its metrics, so the count is read where river's own
    updates put it: the running mean of the metrics that average (``MeanMetric``: MAE, RMSE,
    SMAPE, LogLoss, CrossEntropy) and the confusion matrix of the classification metrics
    that count (Accuracy, Precision, F1, their macro and micro forms); a wrapper is fed when
    the metric it wraps is. A metric that updates otherwise is taken as fed.
    """
    if isinstance(metric, metrics.base.WrapperMetric):
        return fed(metric.metric)
    update = getattr(type(metric), "update", None)
    if update is metrics.base.MeanMetric.update:
        return bool(metric._mean.n)
    if update in _COUNTED_UPDATES:
        return bool(metric.cm.total_weight)
    if isinstance(metric, metrics.ConfusionMatrix):
        return bool(metric.total_weight)
    return True


#: The flavors served, by name, in the order their classes were defined (the order an unknown
#: flavor's error lists them in). Subclasses of :class:`Flavor` join it by naming themselves.
FLAVORS: dict[str, Flavor] = {}

#: Flavor names once accepted (by riverapi) and refused for good, with the reason given.
RETIRED: dict[str, str] = {"creme": "creme was merged into river; upload a river model"}


class Flavor:
    """One kind of model; subclass it with a ``name`` to serve another kind.

    ``methods`` are the methods a model must have; ``any_of`` lists alternatives of which it
    needs one; ``river_class`` is the river class it must be an instance of (``object``: any
    model); ``metric_factories`` make the metrics of a newly uploaded model. A flavor that
    predicts, checks, takes or reads ground truths differently overrides :meth:`_predict`,
    :meth:`_check`, :meth:`check_target` or :meth:`read_classes`.

    The one instance of a flavor serves every model of that flavor, from every thread: it
    keeps no state of its own.
    """

    name: ClassVar[str]
    methods: ClassVar[tuple[str, ...]] = ("learn_one", "predict_one")
    any_of: ClassVar[tuple[str, ...]] = ()
    river_class: ClassVar[type] = object
    metric_factories: ClassVar[tuple[Callable[[], metrics.base.Metric], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names itself is a flavor; one that inherits its name is a family
        # of its own and must not take its parent's place in the registry.
        if "name" in vars(cls):
            _register(cls)

    @classmethod
    def withdraw(cls) -> None:
        """Stop serving this flavor: a flavor defined for a while (by a test, by a plugin
        being unloaded) leaves the registry as it found it. Models stored as that flavor
        then load with :class:`InvalidFlavor`."""
        if "name" not in vars(cls) or type(FLAVORS.get(cls.name)) is not cls:
            raise LookupError(f"{cls.__qualname__} is not a registered flavor.")
        del FLAVORS[cls.name]

    # --- upload ----------------------------------------------------------------------------------

    def check(self, model: Any) -> None:
        """Raise :class:`IncompatibleModel` saying what ``model`` lacks for this flavor."""
        # Looking up attributes runs the model's own __getattr__ and properties, if any.
        with model_code("The model could not be inspected"):
            self._check(model)

    def _check(self, model: Any) -> None:
        """The checks in the order their messages are given: the first failure is reported."""
        self._check_methods(model)
        self._check_class(model)

    def _check_methods(self, model: Any) -> None:
        for method in self.methods:
            if not callable(getattr(model, method, None)):
                raise IncompatibleModel(f"The model does not implement {method}, which the {self.name} flavor needs.")
        if self.any_of and not any(callable(getattr(model, m, None)) for m in self.any_of):
            raise IncompatibleModel(
                f"The model implements none of {', '.join(self.any_of)}; the {self.name} flavor needs one."
            )

    def _check_class(self, model: Any) -> None:
        if not isinstance(final_step(model), self.river_class):
            raise IncompatibleModel(
                f"The {self.name} flavor serves instances of river.base.{self.river_class.__name__}; "
                f"{type(model).__name__} is not one."
            )

    def new_metrics(self) -> list[metrics.base.Metric]:
        """Fresh metrics for a newly uploaded model."""
        return [factory() for factory in self.metric_factories]

    # --- learn and predict -----------------------------------------------------------------------

    def check_target(self, y: Any) -> None:
        """Refuse a ground truth that the model or the metrics of this flavor could not use;
        ``None`` is a learn without one. Any ground truth suits a flavor without metrics."""

    def predict(self, model: Any, x: dict) -> Scored:
        """Ask ``model`` for its prediction on ``x``, with what the metrics need;
        :class:`ModelFailed` when it raises."""
        with model_code("The model could not predict from these features"):
            return self._predict(model, x)

    def _predict(self, model: Any, x: dict) -> Scored:
        """What ``predict_one`` returns, served and scored as it is."""
        value = model.predict_one(x)
        return Scored(value, value)

    def from_value(self, value: Any) -> Scored:
        """A prediction that the caller made and sent with a learn."""
        if isinstance(value, dict):
            if not all(isinstance(p, Real) and not isinstance(p, bool) for p in value.values()):
                raise InvalidInput(f"A prediction given as a dictionary maps labels to probabilities, not {value!r}.")
            return Scored(value, argmax(value), value)
        return Scored(value, value)

    def read_classes(
        self, model: Any, metric_list: list[metrics.base.Metric], x: dict, made: Scored | None, y: Any, prediction: Any
    ) -> tuple[Any, Any]:
        """The ground truth ``y`` and the caller's ``prediction`` of a learn on ``x`` as the
        model's classes, before the learn is recorded; ``made`` is the server's own
        prediction at hand (stored at predict time, or just made), if any. Labels are taken
        as they are here; classifiers read the strings JSON makes of their classes."""
        return y, prediction

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


def _register(cls: type[Flavor]) -> None:
    # A second class under a taken name would silently change how the models stored under
    # it are served; a retired name must keep its refusal.
    if cls.name in FLAVORS or cls.name in RETIRED:
        raise TypeError(f"{cls.__qualname__}: a flavor called {cls.name!r} exists already.")
    FLAVORS[cls.name] = cls()


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name``; :class:`InvalidFlavor` listing the choices otherwise."""
    if name in RETIRED:
        raise InvalidFlavor(f"The {name} flavor is not served: {RETIRED[name]}.")
    try:
        return FLAVORS[name]
    except KeyError:
        raise InvalidFlavor(f"Unknown flavor {name!r}; choose one of {', '.join(FLAVORS)}.") from None

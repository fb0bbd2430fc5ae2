"""The record of a learn batch, and how a replica learns it.

A learn batch is one record of the log, ``("batch", samples)``; each sample is
``(features, ground_truth, waiting, prediction)``: the ground truth and the caller's prediction
as they were sent, and ``waiting`` the prediction the sample's identifier named (its value,
label and probabilities), or None. A single learn's record, ``("learn", sample)``, holds one
sample of the same shape and is learnt the same way (records written by earlier versions,
5-tuples carrying the prediction they were scored with, are applied as written).

Whoever applies a batch record (its sender, every other replica, a replay after a restart)
learns its samples in order, each the way a single learn learns one: the model predicts first
when the metrics need a prediction and nothing gave one, a label spelt as a class is read as
that class, the target is checked, then the model learns and the metrics are scored. Each
sample is so scored with the prediction of the model after exactly the samples before it, as
the same samples sent one by one would be. No record carries a prediction made when it was
decided (the predictions of a batch's later samples depend on the earlier ones, learnt only
once the record is written, and a single learn's on the records that land before it), so
every replica makes them as it applies the record. It makes the same ones: it applies the
same records, in the same order, from the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ModelFailed
from ..flavors import Flavor, Scored

if TYPE_CHECKING:  # replicas import this module to apply batch records
    from .replicas import Replica

#: The tag of a batch record.
BATCH = "batch"
#: One sample of a batch record: (features, ground truth, waiting prediction, caller's prediction).
Sample = tuple[dict, Any, tuple[Any, Any, Any] | None, Any]
#: Called after each sample is learnt, with its features, ground truth as learnt, and the
#: prediction it was scored with.
Each = Callable[[dict, Any, Scored | None], None]


def record(samples: Sequence[Sample]) -> tuple[str, tuple[Sample, ...]]:
    """The record that holds ``samples``, for the codec to sign."""
    return BATCH, tuple(samples)


def samples_of(loaded: Any) -> tuple[Sample, ...] | None:
    """The samples of a loaded record if it is a batch's; None for a single learn's."""
    if type(loaded) is tuple and len(loaded) == 2 and loaded[0] == BATCH:
        samples: tuple[Sample, ...] = loaded[1]
        return samples
    return None


def read(
    flavor: Flavor, model: Any, metrics: list, x: dict, y: Any, made: Scored | None, prediction: Any
) -> tuple[Any, Scored | None]:
    """The ground truth as the model learns it and the prediction scored, for a sample on
    ``x`` whose prediction at hand is ``made``: a label spelt as one of the model's classes is
    read as it, the target checked (:class:`InvalidInput`), and the caller's ``prediction``
    scored when nothing else was."""
    y, prediction = flavor.read_classes(model, metrics, x, made, y, prediction)
    flavor.check_target(y)
    if made is None and prediction is not None:
        made = flavor.from_value(prediction)
    return y, made


def learn(replica: Replica, samples: Sequence[Sample], each: Each | None = None) -> None:
    """Learn ``samples`` on ``replica`` in order (its lock is held).

    :class:`ModelFailed` naming the sample when one fails: the model may hold the samples
    before it, and half of it, so the caller skips the whole record, as every replica does.
    A target refused here (a flavor of one's own whose check depends on the classes read)
    fails the same way on every replica.
    """
    for index, sample in enumerate(samples):
        try:
            y, made = replica.learn(sample)
        except ModelFailed as error:
            raise ModelFailed(error.message).at_sample(index) from error
        if each is not None:
            each(sample[0], y, made)
    # A snapshot is due by samples learnt, not by records.
    replica.extra_samples += len(samples) - 1

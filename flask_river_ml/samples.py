"""The samples of a batch as callers give them, read into what the engine is asked to do.

A learn batch's samples are ``(features, ground_truth)`` pairs, what river's streams yield
(``river.datasets``, ``river.stream.iter_pandas``, ``iter_csv``), or dictionaries as the HTTP
route takes them (``{"features", "ground_truth"?, "prediction"?, "identifier"?}``). A predict
batch's are feature dictionaries or such pairs (their ground truth is not used), with the
identifiers apart. Each sample is checked as a single learn or predict checks its own; the
first one refused is named by its index (:meth:`RiverMLError.at_sample`).

Any iterable will do, a stream that never ends included: no more than one sample past the
limit is read before the batch is refused as too large.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sized
from typing import Any

from .engine import Learn, Predict
from .errors import InvalidInput, RiverMLError, TooLarge
from .payloads import Parsed, check_features, check_identifier, check_values, new_identifiers

#: The fields of a learn sample given as a dictionary.
LEARN_FIELDS = ("features", "ground_truth", "prediction", "identifier")
_LEARN_KEYS = frozenset(LEARN_FIELDS)


def taken(samples: Iterable[Any], limit: int) -> list[Any]:
    """At most ``limit`` samples of ``samples``; :class:`TooLarge` when there are more."""
    if isinstance(samples, str | bytes | dict) or not isinstance(samples, Iterable):
        raise InvalidInput(f"The samples of a batch are a list (or any iterable) of samples, not {_shown(samples)}.")
    found = list(itertools.islice(samples, limit + 1))
    if len(found) > limit:
        held = f"holds {len(samples)} samples" if isinstance(samples, Sized) else "holds more samples"
        raise TooLarge(
            f"This batch {held}; a batch may hold {limit} at most (RIVER_ML_BATCH_MAX_SAMPLES). Send it in parts."
        )
    return found


def learn_requests(samples: Iterable[Any], limit: int, max_features: int) -> list[Learn]:
    """What each sample of a learn batch asks; the first sample refused is named. Samples a
    JSON body held (:class:`~flask_river_ml.payloads.Parsed`) are not walked for the values
    :func:`~flask_river_ml.payloads.parse_json` checked already."""
    parsed = isinstance(samples, Parsed)
    requests = []
    for index, sample in enumerate(taken(samples, limit)):
        try:
            requests.append(_learn(sample, max_features, parsed))
        except RiverMLError as error:
            raise error.at_sample(index) from None
    return requests


def _learn(sample: Any, max_features: int, parsed: bool) -> Learn:
    """One learn sample, checked as :meth:`Service.learn` checks its arguments."""
    if isinstance(sample, dict):
        if not _LEARN_KEYS.issuperset(sample):
            unknown = sorted(str(key) for key in sample if key not in _LEARN_KEYS)
            raise InvalidInput(
                f"A sample holds {', '.join(LEARN_FIELDS)}; not {', '.join(unknown)} "
                "(a sample's features go under features)."
            )
        features, ground_truth = sample.get("features"), sample.get("ground_truth")
        prediction, identifier = sample.get("prediction"), sample.get("identifier")
    elif isinstance(sample, tuple | list) and len(sample) == 2:
        features, ground_truth, prediction, identifier = sample[0], sample[1], None, None
    else:
        raise InvalidInput(
            "A sample is a (features, ground_truth) pair or a dictionary of features, ground_truth, prediction and "
            f"identifier, not {_shown(sample)}."
        )
    if not parsed:
        check_values(ground_truth, "ground_truth")
        check_values(prediction, "prediction")
    if identifier is not None:
        return Learn(ground_truth, identifier=check_identifier(identifier))
    if features is None:
        raise InvalidInput("Give the features, or the identifier of a stored prediction.")
    return Learn(ground_truth, check_features(features, max_features, parsed), None, prediction)


def predict_requests(
    features: Iterable[Any], identifiers: Iterable[Any] | None, limit: int, max_features: int, generate: bool
) -> list[Predict]:
    """What each sample of a predict batch asks: its features and the identifier its prediction
    waits under (one is generated where none is given, when ``generate``); the first sample
    refused is named. Features a JSON body held are not walked again, as for a learn batch."""
    parsed = isinstance(features, Parsed)
    samples = taken(features, limit)
    named = [None] * len(samples) if identifiers is None else taken(identifiers, limit)
    if len(named) != len(samples):
        raise InvalidInput(f"A batch of {len(samples)} samples has {len(named)} identifiers; give one per sample.")
    generated = iter(new_identifiers(sum(identifier is None for identifier in named) if generate else 0))
    requests = []
    for index, (sample, identifier) in enumerate(zip(samples, named, strict=True)):
        try:
            # A pair's ground truth is not used: a labelled stream can be predicted as it is.
            x = sample[0] if isinstance(sample, tuple | list) and len(sample) == 2 else sample
            x = check_features(x, max_features, parsed)
            if identifier is None and generate:
                requests.append(Predict(x, next(generated), None, True))
            else:
                requests.append(Predict(x, None if identifier is None else check_identifier(identifier)))
        except RiverMLError as error:
            raise error.at_sample(index) from None
    return requests


def _shown(value: Any) -> str:
    """``repr(value)``, shortened: a sample can be large."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"

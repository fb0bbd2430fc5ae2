"""The package's exceptions.

Every error the package raises on purpose is a :class:`RiverMLError`. Each carries the HTTP
status the blueprint answers with and a message that tells the caller what to fix, so the
HTTP layer and in-process callers see the same failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: What model code may raise that is the interpreter's, not the model's: a worker asked to
#: stop. Everything else it raises, a Rust panic (a BaseException) included, is the model's
#: failure and is caught::
#:
#:     try:
#:         model.learn_one(x, y)
#:     except INTERPRETER_EXITS:
#:         raise
#:     except BaseException as error:
#:         ...
INTERPRETER_EXITS = (SystemExit, KeyboardInterrupt, GeneratorExit)


class RiverMLError(Exception):
    """The base of every flask-river-ml error."""

    #: The HTTP status that the blueprint answers this error with.
    status: int = 400
    #: The headers of that answer: those of every error of a class (``Retry-After`` on a 503),
    #: and those of one error, which the HTTP layer adds where it knows the request (the
    #: challenge of a 401 names the request's own token endpoint).
    headers: Mapping[str, str] = {}
    #: What failed where, as the HTTP layer answers it beside the message (``{field:
    #: [messages]}``): ``{"samples": {"3": [...]}}`` for the sample of a batch that failed.
    errors: Mapping[str, Any] | None = None
    #: The index of the sample of a batch this error is about, if it is about one.
    sample: int | None = None

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if headers:
            self.add_headers(headers)

    def add_headers(self, headers: Mapping[str, str]) -> None:
        """Answer this error with ``headers`` too (they win over the class's)."""
        self.headers = {**self.headers, **headers}

    def at_sample(self, index: int) -> RiverMLError:
        """This error, told of sample ``index`` of a batch: the message says which sample, and
        ``errors`` keeps the sample's own message under its index. The class stays, and with
        it the status (a 409 for an identifier taken, a 400 for bad features)."""
        self.errors = {"samples": {str(index): [self.message]}}
        self.sample = index
        self.message = f"Sample {index} of the batch: {self.message}"
        self.args = (self.message,)
        return self


class ConfigurationError(RiverMLError, ValueError):
    """A ``RIVER_ML_*`` setting has a wrong type or value (raised by ``init_app``)."""

    status = 500


class InvalidInput(RiverMLError):
    """A payload, a name or a value is malformed."""


class ModelNotFound(RiverMLError):
    """No model is stored under the name."""

    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"No model named '{name}'.")
        self.name = name


class ModelExists(RiverMLError):
    """A model is already stored under the name; delete it first."""

    status = 409


class InvalidFlavor(RiverMLError):
    """The flavor is unknown or retired."""


class IncompatibleModel(RiverMLError):
    """The model cannot be served with the flavor it was uploaded with."""


class UnsafePickle(RiverMLError):
    """An uploaded pickle cannot be loaded, or would reference something outside the safe list."""


class IdentifierNotFound(RiverMLError):
    """No prediction waits for a label under this identifier and model (or it expired)."""


class IdentifierExists(RiverMLError):
    """A prediction already waits for its label under this identifier and model."""

    status = 409


class InvalidSpec(InvalidInput):
    """A JSON description of a model names a class or a parameter that cannot be built."""


class Forbidden(RiverMLError):
    """The caller is known but may not do this (a missing scope, a pickle from afar)."""

    status = 403


class ModelFailed(RiverMLError):
    """The model raised while predicting or learning from the given sample."""


class TooLarge(RiverMLError):
    """A batch holds more samples than RIVER_ML_BATCH_MAX_SAMPLES allows."""

    status = 413


class Busy(RiverMLError):
    """Another change of the same model holds its lock; try again shortly."""

    status = 503
    headers = {"Retry-After": "1"}


class StoreUnavailable(RiverMLError):
    """The storage backend cannot be reached or written; the server recovers once it is back."""

    status = 503
    headers = {"Retry-After": "2"}


class TamperedData(RiverMLError):
    """A stored blob failed its signature check; it was not unpickled."""

    status = 500


__all__ = [
    "Busy",
    "ConfigurationError",
    "Forbidden",
    "IdentifierExists",
    "IdentifierNotFound",
    "IncompatibleModel",
    "InvalidFlavor",
    "InvalidInput",
    "InvalidSpec",
    "ModelExists",
    "ModelFailed",
    "ModelNotFound",
    "RiverMLError",
    "StoreUnavailable",
    "TamperedData",
    "TooLarge",
    "UnsafePickle",
]

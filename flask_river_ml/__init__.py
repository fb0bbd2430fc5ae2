"""Serve online machine-learning models from river inside any Flask application."""

from .errors import (
    Busy,
    ConfigurationError,
    IdentifierNotFound,
    IncompatibleModel,
    InvalidFlavor,
    InvalidInput,
    ModelExists,
    ModelFailed,
    ModelNotFound,
    RiverMLError,
    TamperedData,
    UnsafePickle,
)
from .extension import FlaskRiverML

__version__ = "0.1.0"

__all__ = [
    "Busy",
    "ConfigurationError",
    "FlaskRiverML",
    "IdentifierNotFound",
    "IncompatibleModel",
    "InvalidFlavor",
    "InvalidInput",
    "ModelExists",
    "ModelFailed",
    "ModelNotFound",
    "RiverMLError",
    "TamperedData",
    "UnsafePickle",
    "__version__",
]

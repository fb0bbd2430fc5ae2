"""Serve online machine-learning models from river inside any Flask application."""

from .errors import (
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

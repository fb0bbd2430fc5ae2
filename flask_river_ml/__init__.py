"""Serve online machine-learning models from river inside any Flask application."""

from .auth import Unauthorized, UserExists, UserNotFound
from .errors import (
    Busy,
    ConfigurationError,
    Forbidden,
    IdentifierExists,
    IdentifierNotFound,
    IncompatibleModel,
    InvalidFlavor,
    InvalidInput,
    InvalidSpec,
    ModelExists,
    ModelFailed,
    ModelNotFound,
    RiverMLError,
    StoreUnavailable,
    TamperedData,
    UnsafePickle,
)
from .extension import FlaskRiverML
from .keys import KeysDiffer
from .version import __version__

#: The extension and every exception it raises on purpose, so that callers catch them by the
#: package's name without knowing the module that defines each.
__all__ = [
    "Busy",
    "ConfigurationError",
    "FlaskRiverML",
    "Forbidden",
    "IdentifierExists",
    "IdentifierNotFound",
    "IncompatibleModel",
    "InvalidFlavor",
    "InvalidInput",
    "InvalidSpec",
    "KeysDiffer",
    "ModelExists",
    "ModelFailed",
    "ModelNotFound",
    "RiverMLError",
    "StoreUnavailable",
    "TamperedData",
    "Unauthorized",
    "UnsafePickle",
    "UserExists",
    "UserNotFound",
    "__version__",
]

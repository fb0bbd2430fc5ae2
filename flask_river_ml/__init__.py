"""Serve online machine-learning models from river inside any Flask application."""

from . import errors
from .auth import Unauthorized, UserExists, UserNotFound
from .errors import *  # noqa: F403 - the package's exceptions, listed in errors.__all__
from .extension import FlaskRiverML
from .keys import KeysDiffer
from .version import __version__

#: The extension and every exception it raises on purpose, those of errors.py and those kept
#: with the code that raises them, so that callers catch each by the package's name.
__all__ = [
    "FlaskRiverML",
    "KeysDiffer",
    "Unauthorized",
    "UserExists",
    "UserNotFound",
    "__version__",
    *errors.__all__,
]

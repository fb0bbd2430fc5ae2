"""Serve online machine-learning models from river inside any Flask application."""

from typing import TYPE_CHECKING, Any

from . import errors
from .auth import Unauthorized, UserExists, UserNotFound
from .errors import *  # noqa: F403 - the package's exceptions, listed in errors.__all__
from .keys import KeysDiffer
from .version import __version__

if TYPE_CHECKING:
    from .extension import FlaskRiverML

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


def __getattr__(name: str) -> Any:
    """The extension, imported on first use: the engine, the service and the stores import
    without Flask (their tests run without it, code without a web app can use them)."""
    if name == "FlaskRiverML":
        from .extension import FlaskRiverML

        return FlaskRiverML
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

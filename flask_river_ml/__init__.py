"""Serve online machine-learning models from river inside any Flask application."""

from . import errors
from .errors import *  # noqa: F403 - the package's exceptions, listed in errors.__all__
from .extension import FlaskRiverML
from .version import __version__

__all__ = ["FlaskRiverML", "__version__", *errors.__all__]

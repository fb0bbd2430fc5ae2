"""The package's public names: every exception it raises on purpose is importable from it."""

from __future__ import annotations

import importlib
import pkgutil

import flask_river_ml
from flask_river_ml import errors
from flask_river_ml.errors import RiverMLError


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_error_is_exported():
    """Every public RiverMLError subclass of every module (errors.py's and the others': auth's,
    keys') is in flask_river_ml.__all__ and is the package's attribute of that name."""
    for module in pkgutil.walk_packages(flask_river_ml.__path__, "flask_river_ml."):
        importlib.import_module(module.name)
    package_errors = {
        cls
        for cls in _subclasses(RiverMLError)
        if cls.__module__.startswith("flask_river_ml.") and not cls.__name__.startswith("_")
    }
    # The package takes errors.py's exceptions by its star import, which reads errors.__all__.
    defined = {
        name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, RiverMLError)
    }
    assert defined == set(errors.__all__)
    for cls in package_errors | {RiverMLError}:
        assert cls.__name__ in flask_river_ml.__all__, cls
        assert getattr(flask_river_ml, cls.__name__) is cls


def test_all_names_exist():
    """Nothing in __all__ is missing from the package, nor listed twice."""
    assert len(set(flask_river_ml.__all__)) == len(flask_river_ml.__all__)
    for name in flask_river_ml.__all__:
        assert hasattr(flask_river_ml, name), name

"""Fixtures: a fresh app per test, its instance folder in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_river_ml import FlaskRiverML

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path) -> Iterator[AppFactory]:
    """Build apps on ``tmp_path``: ``make_app(RIVER_ML_STORAGE_BACKEND="memory", ...)``.

    Apps built with the same folder share the shelve store, like two processes would.
    """
    made: list[Flask] = []

    def factory(instance_path: Any = None, **config: Any) -> Flask:
        app = Flask("test_app", instance_path=str(instance_path or tmp_path / "instance"))
        app.config.update(TESTING=True, **config)
        FlaskRiverML(app)
        made.append(app)
        return app

    yield factory
    for app in made:
        FlaskRiverML.state(app).close()


@pytest.fixture(params=["memory", "shelve"])
def backend_name(request) -> str:
    """Each test that uses it runs once per embedded backend."""
    return request.param


@pytest.fixture
def app(make_app, backend_name) -> Iterator[Flask]:
    """An app with the extension on one backend, inside an app context."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name)
    with app.app_context():
        yield app


@pytest.fixture
def river_ml(app) -> FlaskRiverML:
    """The in-process client of ``app`` (any FlaskRiverML object reads the current app)."""
    return FlaskRiverML()

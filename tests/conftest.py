"""Fixtures: a fresh app per test, its instance folder in tmp_path."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from flask_river_ml import FlaskRiverML

#: The redis server every redis test talks to; .ci/run makes sure one answers there.
REDIS_URL = "redis://127.0.0.1:6379/0"

AppFactory = Callable[..., Flask]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared redis server, cleaned up afterwards."""
    prefix = f"river_ml_test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_app(tmp_path, redis_prefix) -> Iterator[AppFactory]:
    """Build apps on ``tmp_path``: ``make_app(RIVER_ML_STORAGE_BACKEND="memory", ...)``.

    Apps built with the same folder share the shelve store, and apps of one test share its
    redis prefix, like two processes would.
    """
    made: list[Flask] = []

    def factory(instance_path: Any = None, **config: Any) -> Flask:
        app = Flask("test_app", instance_path=str(instance_path or tmp_path / "instance"))
        app.config.update(TESTING=True, RIVER_ML_REDIS_URL=REDIS_URL, RIVER_ML_REDIS_PREFIX=redis_prefix)
        app.config.update(config)
        FlaskRiverML(app)
        made.append(app)
        return app

    yield factory
    for app in made:
        FlaskRiverML.state(app).close()


@pytest.fixture(params=["memory", "shelve", "redis"])
def backend_name(request) -> str:
    """Each test that uses it runs once per backend."""
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

"""Fixtures: a fresh app per test, its instance folder in tmp_path.

Tests declare what they need beyond the Python process: ``redis`` (a redis server; every test
run on the redis backend gets the marker from its parameter), ``gunicorn`` (server processes),
``browser`` (Chromium). A test without the ``redis`` marker that connects to redis fails, so
``-m "not redis"`` runs everywhere.
"""

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test run on the redis backend (a parameter of value "redis") ``redis``."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(value in ("redis", "redis-cluster") for value in params.values() if isinstance(value, str)):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(autouse=True)
def _redis_only_where_declared(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``redis`` cannot open a connection to a redis server."""
    if request.node.get_closest_marker("redis") is None:

        def refused(connection: Any, *args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"{request.node.nodeid} connects to redis without the redis marker")

        monkeypatch.setattr(redis.connection.AbstractConnection, "connect", refused)


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of this test's own on the shared redis server, cleaned up afterwards."""
    prefix = f"river_ml_test:{uuid.uuid4().hex}:"
    yield prefix
    if request.node.get_closest_marker("redis") is None:
        return  # the test never reached redis: nothing to clean
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a private Redis Cluster of three masters, for the whole session."""
    from redis_server import RedisClusterServers

    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


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

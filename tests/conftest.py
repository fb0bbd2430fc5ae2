"""Fixtures: a fresh app per test, its instance folder in tmp_path.

Tests declare what they need beyond the Python process: ``redis`` (a redis server; every test
run on the redis backend gets the marker from its parameter), ``gunicorn`` (server processes),
``browser`` (Chromium). A test without the ``redis`` marker that connects to redis fails, so
``-m "not redis"`` runs everywhere.

The redis tests share one redis server for the session: the one at ``RIVER_ML_TEST_REDIS_URL``
when that is set (``RIVER_ML_TEST_REDIS_URL=redis://host:6379/0``), else a ``redis-server`` of
the suite's own on a free port, started when the first of them runs. Each test keeps its keys
under a prefix of its own and deletes them afterwards; a test that stops, flushes or
reconfigures a server starts a private one (tests/redis_server.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from flask_river_ml import FlaskRiverML

#: The environment variable naming a redis server for the redis tests instead of their own.
EXTERNAL_REDIS = "RIVER_ML_TEST_REDIS_URL"
#: The redis URL of the apps of a test without the ``redis`` marker: nothing listens on port 1.
NO_REDIS = "redis://127.0.0.1:1/0"

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


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the session's redis server: ``RIVER_ML_TEST_REDIS_URL``, or a private
    ``redis-server`` on a free port, started by the first test that asks (tests ask through
    :func:`redis_url`)."""
    external = os.environ.get(EXTERNAL_REDIS)
    if external:
        yield external
        return
    from redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of the redis server the redis tests share; only a test marked ``redis`` has it."""
    if request.node.get_closest_marker("redis") is None:
        pytest.fail(f"{request.node.nodeid} uses redis without the redis marker")
    url: str = request.getfixturevalue("session_redis")
    return url


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of this test's own on the shared redis server, cleaned up afterwards."""
    prefix = f"river_ml_test:{uuid.uuid4().hex}:"
    if request.node.get_closest_marker("redis") is None:
        yield prefix  # the test cannot reach redis: nothing to clean
        return
    url = request.getfixturevalue("redis_url")
    yield prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_app(request: pytest.FixtureRequest, tmp_path, redis_prefix) -> Iterator[AppFactory]:
    """Build apps on ``tmp_path``: ``make_app(RIVER_ML_STORAGE_BACKEND="memory", ...)``.

    Apps built with the same folder share the shelve store, and apps of one test share its
    redis prefix, like two processes would. Their redis is the shared server in a test marked
    ``redis``, none in any other.
    """
    marked = request.node.get_closest_marker("redis") is not None
    redis_at = request.getfixturevalue("redis_url") if marked else NO_REDIS
    made: list[Flask] = []

    def factory(instance_path: Any = None, **config: Any) -> Flask:
        app = Flask("test_app", instance_path=str(instance_path or tmp_path / "instance"))
        app.config.update(TESTING=True, RIVER_ML_REDIS_URL=redis_at, RIVER_ML_REDIS_PREFIX=redis_prefix)
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

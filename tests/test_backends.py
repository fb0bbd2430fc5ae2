"""Backends chosen by URL from a registry that a subclass joins: the example of docs/engine.md
registers one, which serves the conformance suite (tests/test_storage.py) and an app."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from river import linear_model
from stores import SharedMemoryBackend

from flask_river_ml import ConfigurationError, FlaskRiverML
from flask_river_ml.storage import Backend, create_backend


def test_the_documented_backend_joins_the_registry():
    assert Backend.registry["shared-memory"] is SharedMemoryBackend
    first = create_backend("shared-memory://a", root="unused", prefix="unused")
    assert create_backend("shared-memory://a", root="unused", prefix="unused") is first
    assert create_backend("shared-memory://b", root="unused", prefix="unused") is not first


def test_two_apps_on_one_custom_store_serve_the_same_model(tmp_path):
    apps = [Flask(f"app{i}", instance_path=str(tmp_path / f"i{i}")) for i in range(2)]
    for app in apps:
        # One SECRET_KEY: the two hosts sign the store's blobs with the same key.
        app.config.update(TESTING=True, SECRET_KEY="shared", RIVER_ML_STORAGE_URL="shared-memory://two-apps")
        FlaskRiverML(app)
    river_ml, local = FlaskRiverML(), linear_model.LinearRegression()
    with apps[0].app_context():
        river_ml.add_model(local.clone(), "regression", name="m")
        river_ml.learn("m", ground_truth=2.0, features={"a": 1.0})
    local.learn_one({"a": 1.0}, 2.0)
    with apps[1].app_context():
        assert river_ml.predict({"a": 1.0}, "m")["prediction"] == local.predict_one({"a": 1.0})
        assert apps[1].test_client().get("/api/").get_json()["storage"] == "shared-memory"
    for app in apps:
        FlaskRiverML.state(app).close()


@pytest.mark.parametrize(
    "url, path",
    [("sqlite:///models.sqlite3", "inst/models.sqlite3"), ("sqlite:///sub/m", "inst/sub/m.sqlite3")],
)
def test_sqlite_urls_are_relative_to_the_app_folder_or_absolute(tmp_path, url, path):
    store = create_backend(url, root=str(tmp_path / "inst"), prefix="unused")
    assert store.path == tmp_path / path  # type: ignore[attr-defined]
    store.close()
    absolute = create_backend(f"sqlite:///{tmp_path / 'abs.sqlite3'}", root="/nowhere", prefix="unused")
    assert absolute.path == tmp_path / "abs.sqlite3"  # type: ignore[attr-defined]
    absolute.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/x"])
def test_an_sqlite_url_without_a_file_is_refused(url):
    with pytest.raises(ValueError, match="names no SQLite file"):
        create_backend(url, root="/tmp", prefix="unused")


def test_an_unknown_scheme_names_the_known_ones(tmp_path):
    app = Flask("app", instance_path=str(tmp_path))
    app.config.update(RIVER_ML_STORAGE_URL="postgres://db/models")
    known = "memory, redis, redis+cluster, rediss, rediss+cluster, shared-memory, sqlite, unix"
    with pytest.raises(ConfigurationError, match=re.escape(known)):
        FlaskRiverML(app)


def serves_like_river(url: str, tmp_path, **config) -> str:
    """An app on the store at ``url`` serves a model as river predicts it; the backend's name."""
    app = Flask("app", instance_path=str(tmp_path / "instance"))
    app.config.update(TESTING=True, RIVER_ML_STORAGE_URL=url, **config)
    FlaskRiverML(app)
    river_ml, local = FlaskRiverML(), linear_model.LinearRegression()
    try:
        with app.app_context():
            river_ml.add_model(local.clone(), "regression", name="m")
            for i in range(5):
                river_ml.learn("m", ground_truth=float(i), features={"a": float(i)})
                local.learn_one({"a": float(i)}, float(i))
            assert river_ml.predict({"a": 2.5}, "m")["prediction"] == local.predict_one({"a": 2.5})
            river_ml.delete_model("m")
            return FlaskRiverML.state(app).backend.name
    finally:
        FlaskRiverML.state(app).close()


@pytest.mark.parametrize("url, name", [("memory://", "memory"), ("sqlite:///models.sqlite3", "shelve")])
def test_an_app_on_each_in_process_scheme(tmp_path, url, name):
    assert serves_like_river(url, tmp_path) == name


def test_an_sqlite_url_names_the_file_the_app_stores_in(tmp_path):
    serves_like_river(f"sqlite:///{tmp_path / 'elsewhere' / 'store.sqlite3'}", tmp_path)
    assert (tmp_path / "elsewhere" / "store.sqlite3").exists()
    serves_like_river("sqlite:///relative/store", tmp_path)
    assert (tmp_path / "instance" / "relative" / "store.sqlite3").exists()


@pytest.mark.redis
def test_an_app_on_each_redis_scheme(tmp_path, redis_prefix, redis_cluster):
    from redis_server import RedisServer

    socket = tmp_path / "redis.sock"
    with RedisServer(tmp_path / "redis", "--unixsocket", str(socket), "--unixsocketperm", "700") as server:
        for url in (server.url, f"unix://{socket}?db=0", redis_cluster):
            assert serves_like_river(url, tmp_path, RIVER_ML_REDIS_PREFIX=redis_prefix) == "redis"


def test_a_rediss_url_makes_a_tls_client():
    """Without a TLS server to reach, the client is checked: rediss:// connects with TLS."""
    from redis.connection import SSLConnection

    store = create_backend("rediss://cache.example:6380/2", root="unused", prefix="p:")
    pool = store.client.connection_pool  # type: ignore[attr-defined]
    assert pool.connection_class is SSLConnection and pool.connection_kwargs["port"] == 6380
    assert store.description == "redis store at cache.example:6380/2"  # type: ignore[attr-defined]
    store.close()

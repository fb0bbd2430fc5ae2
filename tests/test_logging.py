"""What the ``flask_river_ml`` loggers say: a warning for what an operator should look at (a
refused upload, a model that fails), an error for a store that cannot be used, info and debug
for what the engine does with snapshots and logs, and nothing at warning or above while every
request succeeds."""

from __future__ import annotations

import logging
import shutil
from typing import Any

import dill
import pytest
import redis
from flask import Flask
from redis_server import RedisServer
from river import linear_model, preprocessing

from flask_river_ml import FlaskRiverML
from flask_river_ml.storage import base as storage_base

PASSWORD = "s3cret-of-the-redis-url"


def records(caplog: pytest.LogCaptureFixture, level: int, logger: str = "flask_river_ml") -> list[logging.LogRecord]:
    """The records of ``logger`` and its children at exactly ``level``."""
    return [
        record
        for record in caplog.records
        if record.levelno == level and (record.name == logger or record.name.startswith(logger + "."))
    ]


def regressor() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


# --- store failures --------------------------------------------------------------------------------


def require_password(server: RedisServer) -> None:
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", PASSWORD)
    admin.close()


@pytest.mark.redis
def test_a_redis_that_is_away_is_an_error_once_without_its_password(tmp_path, caplog, monkeypatch):
    """Requests answered 503 while the store is down log one error naming the store, never the
    password of its URL; those that follow within the report interval are counted in the next."""
    with RedisServer(tmp_path / "redis") as server:
        require_password(server)
        app = Flask("logging", instance_path=str(tmp_path / "app"))
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        app.config.update(TESTING=True, RIVER_ML_STORAGE_URL=url)
        FlaskRiverML(app)
        client = app.test_client()
        assert client.post("/api/model/regression/away/", data=dill.dumps(regressor())).status_code == 201
        server.stop()
        predict = {"model": "away", "features": {"a": 1.0}}
        with caplog.at_level(logging.DEBUG):
            answers = [client.post("/api/predict/", json=predict) for _ in range(3)]
            monkeypatch.setattr(storage_base, "_REPORT_EVERY", 0.0)
            answers.append(client.post("/api/predict/", json=predict))
        assert [answer.status_code for answer in answers] == [503] * 4
        first, later = records(caplog, logging.ERROR)
        assert first.name == later.name == "flask_river_ml.storage"
        assert f"redis store at 127.0.0.1:{server.port}/0 cannot be reached" in first.getMessage()
        assert "more calls failed since the last report" not in first.getMessage()
        assert "more calls failed since the last report" in later.getMessage()
        assert PASSWORD not in caplog.text
        assert not any(PASSWORD in answer.get_data(as_text=True) for answer in answers)
        server.start()
        require_password(server)
        FlaskRiverML.state(app).close()


def test_a_shelve_store_whose_folder_is_gone_is_an_error_without_its_path(make_app, tmp_path, caplog):
    folder = tmp_path / "store"
    app = make_app(RIVER_ML_STORAGE_BACKEND="shelve", RIVER_ML_SHELVE_PATH=str(folder / "river_ml.shelve"))
    client = app.test_client()
    assert client.post("/api/model/regression/gone/", data=dill.dumps(regressor())).status_code == 201
    shutil.rmtree(folder)
    with caplog.at_level(logging.WARNING, logger="flask_river_ml"):
        answer = client.post("/api/learn/", json={"model": "gone", "features": {"a": 1.0}, "ground_truth": 1.0})
    assert answer.status_code == 503
    (record,) = records(caplog, logging.ERROR)
    assert "shelve store (river_ml.shelve.sqlite3) cannot be used: its folder is gone" in record.getMessage()
    assert str(folder) not in caplog.text

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
from river import base, linear_model, preprocessing

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


class Refusing(base.Regressor):
    """Refuses to learn a negative ground truth and to predict a sample with a "refuse" feature."""

    def learn_one(self, x: dict, y: float) -> None:
        if y < 0:
            raise ValueError("a negative ground truth")

    def predict_one(self, x: dict) -> float:
        if "refuse" in x:
            raise ValueError("no prediction for this one")
        return 0.0


@pytest.fixture
def memory_app(make_app) -> Flask:
    return make_app(RIVER_ML_STORAGE_BACKEND="memory")


# --- warnings ------------------------------------------------------------------------------------


def test_a_model_that_fails_to_learn_or_predict_is_a_warning(memory_app, caplog):
    with memory_app.app_context():
        FlaskRiverML().add_model(Refusing(), "regression", name="refusing")
    client = memory_app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_river_ml"):
        learned = client.post("/api/learn/", json={"model": "refusing", "features": {"a": 1}, "ground_truth": -1})
        predicted = client.post("/api/predict/", json={"model": "refusing", "features": {"refuse": 1}})
    assert (learned.status_code, predicted.status_code) == (400, 400)
    learn, predict = records(caplog, logging.WARNING)
    assert learn.name == predict.name == "flask_river_ml.engine"
    assert "'refusing' could not learn record 1" in learn.getMessage()
    assert "ValueError: a negative ground truth" in learn.getMessage()
    assert "'refusing' could not predict" in predict.getMessage()
    assert "ValueError: no prediction for this one" in predict.getMessage()


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


# --- info and debug ----------------------------------------------------------------------------------


def test_snapshots_loads_and_replays_are_info_and_debug(make_app, tmp_path, caplog):
    """Two processes on one store: the first writes a snapshot every three records; the second
    loads the model from its snapshot, then replays the record after it."""
    shared = {"instance_path": tmp_path / "shared", "RIVER_ML_SNAPSHOT_EVERY": 3}
    first, second = make_app(**shared), make_app(**shared)
    with caplog.at_level(logging.DEBUG, logger="flask_river_ml"):
        with first.app_context():
            river_ml = FlaskRiverML()
            river_ml.add_model(regressor(), "regression", name="folded")
            for value in range(4):
                river_ml.learn("folded", ground_truth=float(value), features={"a": float(value)})
        with second.app_context():
            river_ml.predict({"a": 1.0}, "folded")
    said = {
        (record.levelname, record.getMessage()) for record in caplog.records if record.name == "flask_river_ml.engine"
    }
    assert ("INFO", "Model 'folded' created, served as regression.") in said
    assert ("INFO", "Model 'folded': snapshot written at record 3; the log before it is trimmed.") in said
    assert ("INFO", "Model 'folded': loaded from its snapshot at record 3.") in said
    assert ("DEBUG", "Model 'folded': caught up with the log from record 3 to 4.") in said

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
from pickles import Call, Global, assemble
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


def test_a_refused_pickle_is_logged_with_its_reason_and_the_client_address(memory_app, tmp_path, caplog):
    """A hand-assembled pickle that would run a shell command: 400, and a warning that says who
    sent it and what it named."""
    hostile = assemble(Call(Global("os", "system"), f"touch '{tmp_path / 'pwned'}'"), protocol=4)
    with caplog.at_level(logging.WARNING, logger="flask_river_ml"):
        response = memory_app.test_client().post(
            "/api/model/custom/hostile/", data=hostile, environ_base={"REMOTE_ADDR": "::1"}
        )
    assert response.status_code == 400
    (record,) = records(caplog, logging.WARNING)
    assert record.name == "flask_river_ml.views"
    assert "::1" in record.getMessage() and "os.system" in record.getMessage()
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_from_afar_is_logged_with_the_client_address(memory_app, caplog):
    """A pickle from a client that may not send one (RIVER_ML_UPLOAD_PICKLES = "loopback"): 403,
    and a warning naming the client and why it was refused."""
    with caplog.at_level(logging.WARNING, logger="flask_river_ml"):
        response = memory_app.test_client().post(
            "/api/model/regression/remote/", data=dill.dumps(regressor()), environ_base={"REMOTE_ADDR": "203.0.113.7"}
        )
    assert response.status_code == 403
    (record,) = records(caplog, logging.WARNING)
    assert "203.0.113.7" in record.getMessage() and "loopback clients only" in record.getMessage()


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


# --- a healthy server says nothing alarming -------------------------------------------------------------


def test_a_healthy_sequence_logs_nothing_at_warning_or_above(make_app, backend_name, caplog):
    """Upload (a pickle and a JSON description), learn, predict, label, metrics, stats, the
    model's JSON, download and delete, with snapshots on the way: no logger says anything at
    warning or above."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_SNAPSHOT_EVERY=2)
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        answers = [
            client.post("/api/model/regression/pickled/", data=dill.dumps(regressor())),
            client.post("/api/model/regression/described/", json={"class": "river.linear_model.LinearRegression"}),
        ]
        for name in ("pickled", "described"):
            for value in range(5):
                sample = {"model": name, "features": {"a": float(value)}, "ground_truth": float(value)}
                answers.append(client.post("/api/learn/", json=sample))
            predicted = client.post("/api/predict/", json={"model": name, "features": {"a": 2.0}})
            answers.append(predicted)
            label = {"model": name, "identifier": predicted.get_json()["identifier"], "label": 2.0}
            answers.append(client.post("/api/label/", json=label))
            for path in (f"/api/metrics/?model={name}", f"/api/stats/?model={name}", f"/api/model/{name}/"):
                answers.append(client.get(path))
            answers.append(client.get(f"/api/model/download/{name}/"))
            answers.append(client.delete(f"/api/model/{name}/"))
        answers.append(client.get("/api/models/"))
    assert all(answer.status_code in (200, 201) for answer in answers), [answer.get_json() for answer in answers]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text
    assert any("snapshot written" in record.getMessage() for record in records(caplog, logging.INFO)), caplog.text

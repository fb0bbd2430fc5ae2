"""A store that cannot be reached or written answers 503, never 500, and the server recovers
by itself once the store is back, with every acknowledged learn in the model.

The faults are real, never mocked: a private redis (``tests/redis_server.py``) shut down,
frozen with SIGSTOP, started again; an SQLite file made immutable with ``chattr +i`` (as root,
chmod would not stop this process from writing), locked by another writer, its folder removed.
The model is a standard scaler and a linear regression, whose every sample moves it: a served
model that predicts like a local river model (to 1e-12) trained on the acknowledged samples, in
their order, holds those and no other (a learn answered 503 is not in it).

Outages happen between requests, not during one: a learn in flight when a store goes away
may have been stored although its answer is lost (docs/deploy.md says so).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import pytest
import redis
import requests
from flask import Flask
from redis_server import RedisServer
from river import datasets, linear_model, preprocessing
from servers import serve
from test_storage import immutable

from flask_river_ml import FlaskRiverML
from flask_river_ml.events import EVENTS

MODEL = "outlasting"
SAMPLES = list(datasets.TrumpApproval().take(40))
#: What an answer of an unavailable store may take at most, in seconds (redis-py waits two
#: seconds for a reply of a frozen server; the rate limit may wait as long once).
PROMPT = 5.0
SECRET = "test-store-faults-shared-secret"


def regressor() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of the API: what a route is sent."""

    route: str
    method: str
    path: str
    json: Any = None
    data: bytes | None = None
    writes: bool = True


def calls(name: str, identifier: str, sample: tuple[dict, float]) -> list[Call]:
    """A request to each route that uses the store; ``sample`` is the one learn sends."""
    x, y = sample
    return [
        Call("learn", "POST", "/api/learn/", {"model": name, "features": x, "ground_truth": y}),
        Call("learn stored", "POST", "/api/learn/", {"model": name, "identifier": identifier, "ground_truth": y}),
        Call("predict", "POST", "/api/predict/", {"model": name, "features": x}),
        Call("label", "POST", "/api/label/", {"model": name, "identifier": identifier, "label": y}),
        Call("upload", "POST", "/api/model/regression/another/", data=dill.dumps(regressor())),
        Call("delete", "DELETE", f"/api/model/{name}/"),
        Call("metrics", "GET", f"/api/metrics/?model={name}", writes=False),
        Call("stats", "GET", f"/api/stats/?model={name}", writes=False),
        Call("models", "GET", "/api/models/", writes=False),
        Call("model JSON", "GET", f"/api/model/{name}/", writes=False),
        Call("download", "GET", f"/api/model/download/{name}/", writes=False),
    ]


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    seconds: float


Send = Callable[[Call], Answer]


def client_sender(app: Any, headers: dict[str, str] | None = None) -> Send:
    client = app.test_client()

    def send(call: Call) -> Answer:
        started = time.monotonic()
        response = client.open(call.path, method=call.method, json=call.json, data=call.data, headers=headers)
        body = response.get_json(silent=True) if response.mimetype == "application/json" else response.data
        return Answer(response.status_code, body, dict(response.headers), time.monotonic() - started)

    return send


def http_sender(url: str) -> Send:
    """Each request on a connection of its own, so that they spread over the workers."""

    def send(call: Call) -> Answer:
        started = time.monotonic()
        response = requests.request(
            call.method, url + call.path, json=call.json, data=call.data, headers={"Connection": "close"}, timeout=30
        )
        is_json = response.headers.get("Content-Type", "").startswith("application/json")
        body = response.json() if is_json else response.content
        return Answer(response.status_code, body, dict(response.headers), time.monotonic() - started)

    return send


def assert_unavailable(answer: Answer, route: str, *mentions: str) -> None:
    """A 503 JSON ``{"message"}`` with Retry-After, naming ``mentions``, answered promptly."""
    assert answer.status == 503, (route, answer.status, answer.body)
    assert isinstance(answer.body, dict) and set(answer.body) == {"message"}, (route, answer.body)
    assert all(mention in answer.body["message"] for mention in mentions), (route, answer.body)
    assert int(answer.headers["Retry-After"]) > 0, route
    assert answer.seconds < PROMPT, (route, answer.seconds)


# --- the model and what it was taught ----------------------------------------------------------


@dataclass
class Ledger:
    """The samples the server acknowledged, in order, and a probe of its predictions."""

    send: Send
    name: str = MODEL
    taught: list[tuple[dict, float]] = field(default_factory=list)

    def learn(self, samples: Sequence[tuple[dict, float]]) -> None:
        for x, y in samples:
            body = {"model": self.name, "features": x, "ground_truth": y}
            answer = self.send(Call("learn", "POST", "/api/learn/", body))
            assert answer.status == 201, answer.body
            self.taught.append((x, y))

    def predict(self, x: dict) -> Answer:
        return self.send(Call("predict", "POST", "/api/predict/", {"model": self.name, "features": x}))

    def label(self, identifier: str, x: dict, y: float) -> None:
        body = {"model": self.name, "identifier": identifier, "label": y}
        answer = self.send(Call("label", "POST", "/api/label/", body))
        assert answer.status == 200, answer.body
        self.taught.append((x, y))

    def assert_served_model_is_the_local_one(self) -> None:
        """The server predicts as a local model trained on what it acknowledged, to 1e-12."""
        local = regressor()
        for x, y in self.taught:
            local.learn_one(x, y)
        for x, _ in SAMPLES[-5:]:
            answer = self.predict(x)
            assert answer.status == 201, answer.body
            # To the last few bits only: river sums a dot product in an order that may differ
            # between two copies of one model. One sample more or less moves it far more.
            assert answer.body["prediction"] == pytest.approx(local.predict_one(x), rel=1e-12, abs=0)


def start_serving(ledger: Ledger, upload: Callable[[], Answer]) -> str:
    """Upload the model, teach it ten samples, and keep a prediction waiting for its label;
    the identifier of that prediction."""
    answer = upload()
    assert answer.status == 201, answer.body
    ledger.learn(SAMPLES[:10])
    predicted = ledger.predict(SAMPLES[10][0])
    assert predicted.status == 201, predicted.body
    return str(predicted.body["identifier"])


def upload_call(name: str = MODEL) -> Call:
    return Call("upload", "POST", f"/api/model/regression/{name}/", data=dill.dumps(regressor()))


# --- redis ---------------------------------------------------------------------------------------


def shut_down_saving(server: RedisServer) -> None:
    """Stop the server as an orderly restart does, its data saved and loaded again at start:
    an outage that loses nothing."""
    admin = redis.Redis(port=server.port)
    admin.shutdown(save=True)
    admin.close()
    assert server.process is not None
    server.process.wait(timeout=10)
    server.stop()


@contextlib.contextmanager
def redis_app(folder: Path, server: RedisServer, **config: Any) -> Iterator[Flask]:
    """An app on ``server``, closed (its last snapshots written) while the server is up."""
    app = Flask("faults", instance_path=str(folder))
    app.config.update(
        TESTING=True,
        RIVER_ML_STORAGE_BACKEND="redis",
        RIVER_ML_REDIS_URL=server.url,
        RIVER_ML_SHELVE_SECRET_KEY=SECRET,
        **config,
    )
    FlaskRiverML(app)
    try:
        yield app
    finally:
        FlaskRiverML.state(app).close()


@pytest.mark.redis
def test_a_redis_outage_answers_503_on_every_route_and_loses_no_acknowledged_learn(tmp_path):
    """Frozen (SIGSTOP: connections accepted, nothing answered), then shut down: every route
    answers 503 JSON naming the store, with Retry-After, within seconds, the rate limit on
    redis included. Back (its data kept), the same app serves again, and the model holds
    exactly the learns and the label answered 201 and 200, in their order."""
    limited = {"RIVER_ML_VIEW_RATE_LIMIT_DISABLE": False, "RIVER_ML_VIEW_RATE_LIMIT": "10000/m"}
    with RedisServer(tmp_path / "redis") as server, redis_app(tmp_path / "app", server, **limited) as app:
        send = client_sender(app)
        ledger = Ledger(send)
        identifier = start_serving(ledger, lambda: send(upload_call()))
        where = f"redis store at 127.0.0.1:{server.port}/0"
        # A stream's subscription, open through the outage.
        events = FlaskRiverML.state(app).service.events.events.subscribe()

        # Only reads while it is frozen: a write sent then would run once it thaws.
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            for call in calls(MODEL, identifier, SAMPLES[30]):
                if not call.writes:
                    assert_unavailable(send(call), call.route, where, "cannot be reached")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        ledger.learn(SAMPLES[11:15])

        shut_down_saving(server)
        for call in calls(MODEL, identifier, SAMPLES[31]):
            assert_unavailable(send(call), call.route, where, "cannot be reached")
        server.start()
        # The stream's listener subscribes again by itself (what is published before it has
        # is lost, as for any listener away): then the events after the outage reach it.
        backend = FlaskRiverML.state(app).backend
        deadline = time.monotonic() + 10
        while not backend.has_listeners(EVENTS) and time.monotonic() < deadline:
            time.sleep(0.1)
        ledger.label(identifier, *SAMPLES[10])
        ledger.learn(SAMPLES[15:25])
        ledger.assert_served_model_is_the_local_one()
        stats = send(Call("stats", "GET", f"/api/stats/?model={MODEL}"))
        assert stats.body["learn"]["n_calls"] == 24
        received = []
        while (message := events.get(timeout=5)) is not None:
            received.append(json.loads(message))
        learnt = [event["data"]["features"] for event in received if event["event"] == "learn"]
        assert learnt[-10:] == [x for x, _ in SAMPLES[15:25]], received
        events.close()


@pytest.mark.redis
def test_a_redis_outage_answers_503_to_authentication(tmp_path):
    """With authentication on, the token endpoint and the check of an access token need the
    users kept in the store: 503 while it is away, and both work again once it is back."""
    with (
        RedisServer(tmp_path / "redis") as server,
        redis_app(tmp_path / "app", server, RIVER_ML_DISABLE_AUTHENTICATION=False) as app,
    ):
        with app.app_context():
            api_token = FlaskRiverML().create_user("alice", "pw")
        client = app.test_client()
        basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{api_token}".encode()).decode()}
        granted = client.get("/api/auth/token/", headers=basic)
        assert granted.status_code == 200, granted.get_json()
        bearer = {"Authorization": f"Bearer {granted.get_json()['token']}"}
        assert client.get("/api/models/", headers=bearer).status_code == 200

        shut_down_saving(server)
        for route, headers in (("/api/auth/token/", basic), ("/api/models/", bearer)):
            assert_unavailable(client_sender(app, headers)(Call(route, "GET", route)), route, "redis store")
        server.start()
        assert client.get("/api/auth/token/", headers=basic).status_code == 200
        assert client.get("/api/models/", headers=bearer).get_json() == {"models": []}


@pytest.mark.gunicorn
@pytest.mark.redis
def test_a_redis_outage_under_gunicorn(tmp_path):
    """Two gunicorn workers on a redis that shuts down: every route answers 503 JSON from
    each worker, promptly; started again, both serve without a restart, no worker died, and
    the model holds exactly what was acknowledged."""
    with RedisServer(tmp_path / "redis") as server:
        env = {
            "FLASK_RIVER_ML_STORAGE_BACKEND": "redis",
            "FLASK_RIVER_ML_REDIS_URL": server.url,
            "FLASK_RIVER_ML_SHELVE_SECRET_KEY": SECRET,
            "FLASK_RIVER_ML_VIEW_RATE_LIMIT_DISABLE": "false",
        }
        with serve(tmp_path / "server", env, workers=2, access_log=True) as gunicorn:
            send = http_sender(gunicorn.url)
            ledger = Ledger(send)
            identifier = start_serving(ledger, lambda: send(upload_call()))
            where = f"redis store at 127.0.0.1:{server.port}/0"

            shut_down_saving(server)
            before = len(gunicorn.requests())
            for _ in range(5):
                for call in calls(MODEL, identifier, SAMPLES[31]):
                    assert_unavailable(send(call), call.route, where)
                refused = {entry.pid for entry in gunicorn.requests()[before:] if entry.status == 503}
                if refused == gunicorn.worker_pids():
                    break
            assert refused == gunicorn.worker_pids()

            server.start()
            restarted = len(gunicorn.requests())
            ledger.label(identifier, *SAMPLES[10])
            ledger.learn(SAMPLES[11:30])
            for _ in range(5):
                ledger.assert_served_model_is_the_local_one()
                served = {entry.pid for entry in gunicorn.requests()[restarted:] if entry.status in (200, 201)}
                if served == gunicorn.worker_pids():
                    break
            assert served == gunicorn.worker_pids()
            answered = gunicorn.requests()
            assert not [entry for entry in answered if entry.status >= 500 and entry.status != 503]
            assert not [entry for entry in answered[restarted:] if entry.status >= 300]
            assert len(gunicorn.worker_pids()) == 2, gunicorn.log_text()
            assert "Traceback" not in gunicorn.log_text(), gunicorn.log_text()


# --- SQLite ----------------------------------------------------------------------------------------


@pytest.fixture
def shelve_app(make_app, tmp_path, monkeypatch) -> tuple[Any, Path]:
    """An app on a shelve store in a folder of its own (a write waits 0.3 s for a lock)."""
    from flask_river_ml.storage import sqlite_files

    monkeypatch.setattr(sqlite_files, "_BUSY_SECONDS", 0.3)
    folder = tmp_path / "store"
    return make_app(RIVER_ML_STORAGE_BACKEND="shelve", RIVER_ML_SHELVE_PATH=str(folder / "river_ml.shelve")), folder


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Another writer holds the file's write lock for the block."""
    holder = sqlite3.connect(folder / "river_ml.shelve.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


FAULTS: dict[str, tuple[Callable[[Path], contextlib.AbstractContextManager[None]], str]] = {
    "immutable": (
        lambda folder: immutable(folder / "river_ml.shelve.sqlite3", folder / "river_ml.shelve.sqlite3-wal"),
        "cannot be used",
    ),
    "locked": (locked, "locked by another writer"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_unwritable_sqlite_store_answers_503_to_writes_and_recovers(shelve_app, fault):
    """The file immutable, or locked by another writer too long: every route that writes
    answers 503 JSON naming the store (not its folder), the others serve; once it can be
    written again, the model holds exactly what was acknowledged."""
    app, folder = shelve_app
    send = client_sender(app)
    ledger = Ledger(send)
    identifier = start_serving(ledger, lambda: send(upload_call()))
    make_fault, mention = FAULTS[fault]
    with make_fault(folder):
        for call in calls(MODEL, identifier, SAMPLES[31]):
            answer = send(call)
            if call.writes:
                assert_unavailable(answer, call.route, "shelve store (river_ml.shelve.sqlite3)", mention)
                assert str(folder) not in answer.body["message"]
            else:
                assert answer.status == 200, (call.route, answer.body)
    ledger.label(identifier, *SAMPLES[10])
    ledger.learn(SAMPLES[11:20])
    ledger.assert_served_model_is_the_local_one()


def test_a_removed_sqlite_folder_answers_503_until_it_is_back(shelve_app):
    """While the store's folder is gone every route answers 503; made again, the folder holds
    a new, empty store, which serves at once."""
    app, folder = shelve_app
    send = client_sender(app)
    identifier = start_serving(Ledger(send), lambda: send(upload_call()))
    shutil.rmtree(folder)
    for call in calls(MODEL, identifier, SAMPLES[31]):
        assert_unavailable(send(call), call.route, "its folder is gone")
    assert not folder.exists()
    folder.mkdir()
    models = send(Call("models", "GET", "/api/models/"))
    assert (models.status, models.body) == (200, {"models": []})
    # Another name: a model uploaded again under a lost one is the engine's own test (replicas
    # of the lost store must not take it for theirs).
    ledger = Ledger(send, "afresh")
    assert send(upload_call("afresh")).status == 201
    ledger.learn(SAMPLES[:8])
    ledger.assert_served_model_is_the_local_one()


@pytest.mark.redis
def test_streams_answer_503_while_the_store_is_away(tmp_path):
    """A stream cannot answer an error once it has begun: it answers 503 JSON before it
    starts while the store is away, and streams again once it is back."""
    with RedisServer(tmp_path / "redis") as server, redis_app(tmp_path / "app", server) as app:
        client = app.test_client()
        server.stop()
        for path in ("/api/stream/events/", "/api/stream/metrics/"):
            assert_unavailable(client_sender(app)(Call(path, "GET", path)), path, "redis store")
        server.start()
        response = client.get("/api/stream/events/", buffered=False)
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
        assert next(response.response) == b": keep-alive\n\n"
        response.close()

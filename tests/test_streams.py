"""The event and metric streams: riverapi's stream_events() and
stream_metrics() against a real gunicorn server, keep-alives, in-process calls, dropped and
slow clients, tokens, and the redis fan-out between processes."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from river import linear_model
from riverapi.main import Client
from servers import serve
from werkzeug.serving import make_server

from flask_river_ml import FlaskRiverML
from flask_river_ml import events as events_module

#: The keep-alive period every server of this module runs with.
KEEPALIVE = 1
#: How long an event may take from the call that caused it to the stream's client.
LATENCY = 1.0
REGRESSION_METRICS = {"MAE", "RMSE", "SMAPE"}


# --- helpers -----------------------------------------------------------------------------------


class StreamReader:
    """Reads the lines of a stream (riverapi's generators) in a daemon thread of its own,
    each with the monotonic time it arrived, until :meth:`stop`.

    The thread closes the generator itself (a generator cannot be closed from another thread
    while it runs), which closes riverapi's response; the keep-alives make sure it gets a line,
    and so a chance to stop, at least every KEEPALIVE seconds.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._received: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for line in self._lines:
                with self._changed:
                    self._received.append((time.monotonic(), line))
                    self._changed.notify_all()
                if self._stop.is_set():
                    break
        finally:
            self._lines.close()  # type: ignore[attr-defined]

    @property
    def received(self) -> list[tuple[float, str]]:
        with self._changed:
            return list(self._received)

    def wait_for(self, predicate: Callable[[list[tuple[float, str]]], Any], timeout: float = 5) -> Any:
        """The first truthy ``predicate(received lines)``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate(list(self._received))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"The stream never delivered what was expected: {len(parse(self._received))} messages "
                        f"in {len(self._received)} lines, the last ones {self._received[-6:]!r}"
                    )
                self._changed.wait(left)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5 * KEEPALIVE)
        assert not self.thread.is_alive(), "the stream reader did not stop"


def parse(lines: Iterable[tuple[float, str]]) -> list[tuple[float, str | None, dict[str, Any]]]:
    """The messages in stream lines: (arrival time, event name or None, parsed data)."""
    messages = []
    event = None
    for arrived, line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            messages.append((arrived, event, json.loads(line[len("data: ") :])))
            event = None
    return messages


def frames(chunks: Iterable[bytes]) -> list[tuple[str | None, dict[str, Any]]]:
    """The (event, data) messages in the raw chunks of a text/event-stream."""
    text = b"".join(chunks).decode()
    lines = [(0.0, line) for line in text.splitlines() if line]
    return [(event, data) for _, event, data in parse(lines)]


def read_stream(
    response: Any, until: Callable[[list[tuple[str | None, dict[str, Any]]]], bool], timeout: float = 5
) -> list:
    """Read chunks of a streamed test-client response until ``until(messages)``; the
    keep-alives hand control back at least every KEEPALIVE seconds."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    for chunk in response.response:
        chunks.append(chunk if isinstance(chunk, bytes) else chunk.encode())
        if until(frames(chunks)):
            return frames(chunks)
        if time.monotonic() > deadline:
            break
    pytest.fail(f"The stream did not deliver what was expected within {timeout} s: {b''.join(chunks)!r}")


def connected(lines: list[tuple[float, str]]) -> bool:
    return any(line == ": keep-alive" for _, line in lines)


def wait_until(condition: Callable[[], Any], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.05)


def regression_model() -> Any:
    return linear_model.LinearRegression()


def samples(count: int, start: int = 0) -> list[tuple[dict[str, float], float]]:
    return [({"x": float(i), "z": float(i % 3)}, 2.0 * i + 1.0) for i in range(start, start + count)]


# --- a real server, driven by riverapi ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The example app (shelve store) under gunicorn: one worker with threads, so that every
    request lands in the process whose streams are read."""
    env = {"FLASK_RIVER_ML_STREAM_KEEPALIVE_SECONDS": str(KEEPALIVE)}
    with serve(tmp_path_factory.mktemp("streams_server"), env=env, workers=1, threads=8) as running:
        yield running.url
        assert "Traceback" not in running.log_text(), running.log_text()


@pytest.mark.gunicorn
def test_riverapi_streams_deliver_learn_predict_and_label(server):
    """riverapi's stream_events() yields `event: learn|predict|label` + `data: {...}` lines, and
    stream_metrics() `data: {...metrics..., "model"}` lines, each within a second of the call."""
    cli = Client(server, quiet=True)
    name = cli.upload_model(regression_model(), "regression", "stream-events")
    mirror = regression_model()
    events = StreamReader(Client(server, quiet=True).stream_events())
    metrics = StreamReader(Client(server, quiet=True).stream_metrics())
    try:
        events.wait_for(connected)
        metrics.wait_for(connected)
        (x1, y1), (x2, y2) = samples(2, start=3)

        started = time.monotonic()
        assert cli.learn(name, x1, y1) == "Successful learn."
        arrived, event, data = events.wait_for(lambda lines: parse(lines)[0:1])[0]
        assert event == "learn"
        expected = mirror.predict_one(x1)
        assert data == {"model": name, "features": x1, "prediction": pytest.approx(expected), "ground_truth": y1}
        assert arrived - started < LATENCY
        mirror.learn_one(x1, y1)
        arrived, _, values = metrics.wait_for(lambda lines: parse(lines)[0:1])[0]
        assert set(values) == REGRESSION_METRICS | {"model"} and values["model"] == name
        assert values["MAE"] == pytest.approx(abs(y1 - expected))
        assert arrived - started < LATENCY

        started = time.monotonic()
        result = cli.predict(name, x2)
        arrived, event, data = events.wait_for(lambda lines: parse(lines)[1:2])[0]
        assert event == "predict"
        assert data == {"model": name, "features": x2, "prediction": result["prediction"]}
        assert result["prediction"] == pytest.approx(mirror.predict_one(x2))
        assert arrived - started < LATENCY

        started = time.monotonic()
        assert cli.label(y2, result["identifier"], name) == "Successful label."
        arrived, event, data = events.wait_for(lambda lines: parse(lines)[2:3])[0]
        assert event == "label"
        assert data == {"model": name, "features": x2, "prediction": result["prediction"], "ground_truth": y2}
        assert arrived - started < LATENCY
        arrived, _, values = metrics.wait_for(lambda lines: parse(lines)[1:2])[0]
        assert arrived - started < LATENCY
        assert values == {**cli.metrics(name), "model": name}

        # A predict moves no metric: two metric messages for one learn and one label.
        time.sleep(0.2)
        assert [event for _, event, _ in parse(events.received)] == ["learn", "predict", "label"]
        assert len(parse(metrics.received)) == 2
    finally:
        events.stop()
        metrics.stop()


@pytest.mark.gunicorn
def test_idle_streams_get_keepalive_comments(server):
    """An idle stream gets a `: keep-alive` comment line at least every STREAM_KEEPALIVE_SECONDS."""
    readers = [
        StreamReader(Client(server, quiet=True).stream_events()),
        StreamReader(Client(server, quiet=True).stream_metrics()),
    ]
    try:
        for reader in readers:
            lines = reader.wait_for(lambda lines: len(lines) >= 4 and lines, timeout=4 * KEEPALIVE + 2)
            assert lines[0][1] == ": keep-alive"
            assert {line for _, line in lines[1:]} == {": keep-alive"}
            gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(lines)]
            assert max(gaps) < KEEPALIVE + 0.5, gaps
    finally:
        for reader in readers:
            reader.stop()


@pytest.mark.gunicorn
def test_streams_see_the_events_of_every_worker(tmp_path):
    """With several gunicorn workers on the shelve store, a stream sees every event, whichever
    worker handled the request (every stream sees every event)."""
    env = {"FLASK_RIVER_ML_STREAM_KEEPALIVE_SECONDS": str(KEEPALIVE)}
    with serve(tmp_path, env=env, workers=2, threads=4, access_log=True) as running:
        cli = Client(running.url, quiet=True)
        name = cli.upload_model(regression_model(), "regression", "every-worker")
        reader = StreamReader(Client(running.url, quiet=True).stream_events())
        try:
            reader.wait_for(connected)
            sent = 0
            # Learn until both workers have handled some learns (the access log names them).
            for batch in range(20):
                for x, y in samples(5, start=5 * batch):
                    cli.learn(name, x, y)
                sent += 5
                if len({entry.pid for entry in running.requests() if entry.path == "/api/learn/"}) == 2:
                    break
            else:
                pytest.fail("every learn went to one worker")
            reader.wait_for(lambda lines: len(parse(lines)) >= sent, timeout=2 * LATENCY)
        finally:
            reader.stop()


# --- in-process calls --------------------------------------------------------------------------


@pytest.fixture
def memory_app(make_app) -> Flask:
    return make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_STREAM_KEEPALIVE_SECONDS=KEEPALIVE)


def test_in_process_calls_produce_the_same_events_as_http(memory_app):
    """learn, predict and label called on the extension send the same stream messages as the
    same calls over HTTP (two identical models, one driven each way)."""
    river_ml = FlaskRiverML()
    state = FlaskRiverML.state(memory_app)
    client = memory_app.test_client()
    with memory_app.app_context():
        river_ml.add_model(regression_model(), "regression", "over-http")
        river_ml.add_model(regression_model(), "regression", "in-process")
    hub_subscription = state.service.events.events.subscribe()
    events = client.get("/api/stream/events/")
    metrics = client.get("/api/stream/metrics/")
    try:
        assert events.status_code == 200 and events.mimetype == "text/event-stream"
        (x1, y1), (x2, y2) = samples(2, start=5)
        for path, payload in [
            ("/api/learn/", {"model": "over-http", "features": x1, "ground_truth": y1}),
            ("/api/predict/", {"model": "over-http", "features": x2, "identifier": "id-1"}),
            ("/api/label/", {"model": "over-http", "identifier": "id-1", "label": y2}),
        ]:
            response = client.post(path, json=payload)
            assert response.status_code in (200, 201), response.get_json()
        with memory_app.app_context():
            river_ml.learn("in-process", ground_truth=y1, features=x1)
            river_ml.predict(x2, "in-process", identifier="id-1")
            river_ml.label(y2, "id-1", "in-process")

        sent = read_stream(events, lambda found: len(found) >= 6)
        by_model = {
            model: [(event, {**data, "model": "?"}) for event, data in sent if data["model"] == model]
            for model in ("over-http", "in-process")
        }
        assert [event for event, _ in by_model["over-http"]] == ["learn", "predict", "label"]
        assert by_model["in-process"] == by_model["over-http"]
        assert by_model["in-process"][0][1] == {"model": "?", "features": x1, "prediction": 0.0, "ground_truth": y1}

        updates = read_stream(metrics, lambda found: len(found) >= 4)
        assert [data["model"] for _, data in updates] == ["over-http", "over-http", "in-process", "in-process"]
        assert updates[0][1] == {**updates[2][1], "model": "over-http"}
        assert updates[1][1] == {**updates[3][1], "model": "over-http"}
        with memory_app.app_context():
            assert {**river_ml.metrics("in-process"), "model": "in-process"} == updates[3][1]

        # The hub gives a subscriber the same six messages.
        raw = [hub_subscription.get(KEEPALIVE) for _ in range(6)]
        models = [json.loads(message)["data"]["model"] for message in raw if message]
        assert models == ["over-http"] * 3 + ["in-process"] * 3
    finally:
        events.close()
        metrics.close()
        hub_subscription.close()
    assert len(state.service.events.events) == 0 and len(state.service.events.metrics) == 0


# --- dropped and slow clients ------------------------------------------------------------------


def test_dropped_clients_leave_no_queue_or_thread(memory_app):
    """50 clients open streams on a threaded werkzeug server, read the first line and drop
    them: the server then holds no subscription, listener or thread for them."""
    state = FlaskRiverML.state(memory_app)
    hubs = state.service.events
    before = threading.active_count()
    server = make_server("127.0.0.1", 0, memory_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/api/stream"
        responses = []
        try:
            for index in range(50):
                response = requests.get(f"{base}/{'events' if index % 2 else 'metrics'}/", stream=True, timeout=5)
                responses.append(response)
                assert response.status_code == 200
                assert next(response.iter_lines()) == b": keep-alive"
            assert len(hubs.events) == 25 and len(hubs.metrics) == 25
            assert threading.active_count() >= before + 51
        finally:
            for response in responses:
                response.close()
        # Each server thread notices its client is gone when a keep-alive fails to go out.
        wait_until(
            lambda: len(hubs.events) == 0 and len(hubs.metrics) == 0 and threading.active_count() <= before + 1,
            timeout=5 * KEEPALIVE + 3,
            message=f"{len(hubs.events)} + {len(hubs.metrics)} subscriptions and "
            f"{threading.active_count() - before - 1} request threads left",
        )
        assert not state.backend.has_listeners(events_module.EVENTS)
        assert not state.backend.has_listeners(events_module.METRICS)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert threading.active_count() <= before


def test_head_request_on_a_stream_holds_no_subscription(memory_app):
    """A HEAD on a stream (a health check, a curl -I) answers its headers and keeps no
    subscription: its generator never runs, so nothing waits for its queue."""
    hubs = FlaskRiverML.state(memory_app).service.events
    client = memory_app.test_client()
    for path in ("/api/stream/events/", "/api/stream/metrics/"):
        with client.head(path) as response:
            assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert len(hubs.events) == 0 and len(hubs.metrics) == 0


def test_slow_stream_is_closed_rather_than_buffered(make_app, backend_name, monkeypatch):
    """A subscription whose queue fills (events.QUEUE_SIZE messages nobody read) is closed and
    removed from its hub, and its stream ends; no thread fails on the way."""
    monkeypatch.setattr(events_module, "QUEUE_SIZE", 5)
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_STREAM_KEEPALIVE_SECONDS=KEEPALIVE)
    state = FlaskRiverML.state(app)
    hub = state.service.events.events
    river_ml = FlaskRiverML()
    with app.app_context():
        name = river_ml.add_model(regression_model(), "regression", "slow-reader")
    subscription = hub.subscribe()
    response = app.test_client().get("/api/stream/events/")
    try:
        assert len(hub) == 2
        # redis caches whether anyone listens for a quarter of a second.
        time.sleep(0.5)
        with app.app_context():
            for x, y in samples(8):
                river_ml.learn(name, ground_truth=y, features=x)
        wait_until(lambda: subscription.closed and len(hub) == 0, timeout=5, message="the slow subscriptions stayed")
        assert subscription.queue.qsize() == 5
        # The stream's generator finds its subscription closed and ends.
        deadline = time.monotonic() + 3 * KEEPALIVE
        rest = []
        for chunk in response.response:
            rest.append(chunk)
            assert time.monotonic() < deadline, f"the stream of a closed subscription kept going: {rest!r}"
        assert len([event for event, _ in frames(rest) if event]) <= 5
        wait_until(
            lambda: not state.backend.has_listeners(events_module.EVENTS),
            timeout=2,
            message="a listener stayed after the last subscription closed",
        )
    finally:
        response.close()
    assert len(hub) == 0


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate_limited", [False, True], ids=["no-rate-limit", "rate-limit"])
def test_streams_need_a_token_and_take_it_in_the_query(make_app, rate_limited):
    """With auth on, streams answer 401 JSON without a token, accept ?token=<access token> and
    Authorization: Bearer, and refuse a bad token; rate limiting keeps ?token= working."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_STREAM_KEEPALIVE_SECONDS=KEEPALIVE,
        RIVER_ML_DISABLE_AUTHENTICATION=False,
        RIVER_ML_VIEW_RATE_LIMIT_DISABLE=not rate_limited,
    )
    with app.app_context():
        api_token = FlaskRiverML().create_user("streamer", "secret password")
    client = app.test_client()
    basic = base64.b64encode(f"streamer:{api_token}".encode()).decode()
    grant = client.get("/api/auth/token/", headers={"Authorization": f"Basic {basic}"})
    assert grant.status_code == 200, grant.get_json()
    token = grant.get_json()["token"]
    hubs = FlaskRiverML.state(app).service.events

    for path in ("/api/stream/events/", "/api/stream/metrics/"):
        for refused in [client.get(path), client.get(path, query_string={"token": "not-a-token"})]:
            with refused:
                assert refused.status_code == 401
                assert refused.mimetype == "application/json" and refused.get_json()["message"]
                assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="http://localhost/api/auth/token/"')
        accepted = [
            client.get(path, query_string={"token": token}),
            client.get(path, headers={"Authorization": f"Bearer {token}"}),
        ]
        for response in accepted:
            with response:
                assert response.status_code == 200 and response.mimetype == "text/event-stream"
                assert next(iter(response.response)) in (b": keep-alive\n\n", ": keep-alive\n\n")
                if rate_limited:
                    assert "X-RateLimit-Limit" in response.headers
    assert len(hubs.events) == 0 and len(hubs.metrics) == 0


# --- redis fan-out -----------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_streams_see_events_of_another_process(make_app):
    """Two apps on one redis stand for two server processes: streams opened on app A see the
    events and metrics of a learn handled by app B, once each, as do B's own streams."""
    config = {"RIVER_ML_STORAGE_BACKEND": "redis", "RIVER_ML_STREAM_KEEPALIVE_SECONDS": KEEPALIVE}
    first, second = make_app(**config), make_app(**config)
    with second.app_context():
        FlaskRiverML().add_model(regression_model(), "regression", "fanned-out")
    client_a, client_b = first.test_client(), second.test_client()
    streams = {
        "a-events": client_a.get("/api/stream/events/"),
        "a-metrics": client_a.get("/api/stream/metrics/"),
        "b-events": client_b.get("/api/stream/events/"),
    }
    try:
        # Listener presence is cached for 0.25 s: let app B see the new listeners.
        time.sleep(0.5)
        (x, y), (x2, _) = samples(2, start=7)
        started = time.monotonic()
        response = client_b.post("/api/learn/", json={"model": "fanned-out", "features": x, "ground_truth": y})
        assert response.status_code == 201, response.get_json()
        expected = ("learn", {"model": "fanned-out", "features": x, "prediction": 0.0, "ground_truth": y})
        assert read_stream(streams["a-events"], lambda found: bool(found)) == [expected]
        assert time.monotonic() - started < LATENCY
        ((event, values),) = read_stream(streams["a-metrics"], lambda found: bool(found))
        assert event is None and set(values) == REGRESSION_METRICS | {"model"}
        with second.app_context():
            assert values == {**FlaskRiverML().metrics("fanned-out"), "model": "fanned-out"}
        # And the other way round: an in-process predict on A reaches B's stream; A's stream
        # got the learn once, its next message is the predict.
        with first.app_context():
            FlaskRiverML().predict(x2, "fanned-out")
        found = read_stream(streams["b-events"], lambda found: len(found) >= 2)
        assert [event for event, _ in found] == ["learn", "predict"]
        assert read_stream(streams["a-events"], lambda found: bool(found)) == [found[1]]
    finally:
        for stream in streams.values():
            stream.close()
    hubs = [FlaskRiverML.state(app).service.events for app in (first, second)]
    assert all(len(hub.events) == 0 and len(hub.metrics) == 0 for hub in hubs)

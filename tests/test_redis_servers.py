"""The redis backend behind real servers (docs/engine.md, docs/deploy.md):
gunicorn workers learning into one model, two servers ("hosts") sharing one redis, a crash of a
whole server under load, upload, replace and delete seen by every worker, events fanned out
from every worker, and a rate limit that holds across processes; all but the rate limit on one
redis server and on a Redis Cluster of three masters.

Concurrent learns reach the model in an order nobody knows, so the models here do not depend
on it: a multinomial naive Bayes on the word counts of texts only counts. Whatever order a
server applied the samples in, its model must hold the counts of a local river model trained on
the same samples, and predict what that model predicts. (The words are counted here rather than
by a ``BagOfWords(on="text")`` step in the model: such a step keeps an ``operator.itemgetter``,
which the upload's safe unpickler refuses.)

Each server runs the example app with FLASK_RIVER_ML_* settings in its environment, under the
key prefix of its test (cleaned up afterwards) and in a folder of its own.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dill
import pytest
import redis
import requests
from requests.adapters import HTTPAdapter
from river import naive_bayes
from servers import Server, serve

from flask_river_ml import FlaskRiverML

pytestmark = [pytest.mark.gunicorn, pytest.mark.redis]

Sample = tuple[dict[str, Any], bool]

#: Every host of a deployment signs stored pickles with the same key (docs/deploy.md).
SECRET = "test-redis-servers-shared-secret"
VOCABULARY = (
    "river", "stream", "model", "learn", "online", "drift", "batch", "label",
    "class", "tree", "forest", "window", "metric", "sample", "feature", "vector",
    "flask", "redis", "worker", "server", "request", "queue", "event", "socket",
)  # fmt: skip
#: Texts with more of these words than of the others are labelled True.
POSITIVE = frozenset(VOCABULARY[::2])
#: The metrics of the binary flavor.
BINARY_METRICS = {"Accuracy", "LogLoss", "Precision", "Recall", "F1"}
#: Requests a round sends at once on fresh connections (see :func:`on_every_worker`).
ROUND = 40


# --- samples and local models --------------------------------------------------------------------


def make_samples(seed: int, n: int) -> list[Sample]:
    """``n`` texts of seeded random words as word counts, each labelled by its words."""
    rng = random.Random(seed)
    result = []
    for _ in range(n):
        words = rng.choices(VOCABULARY, k=rng.randint(3, 9))
        score = sum(1 if word in POSITIVE else -1 for word in words)
        result.append((dict(Counter(words)), score > 0))
    return result


def new_model() -> Any:
    return naive_bayes.MultinomialNB()


def trained(samples: Sequence[Sample], model: Any = None) -> Any:
    """``model`` (a new one by default) after learning ``samples``."""
    model = new_model() if model is None else model
    for x, y in samples:
        model.learn_one(x, y)
    return model


def tally(model: Any) -> Counter:
    """Everything the naive Bayes has counted, flat: per class, per class total and per
    (word, class). Counts add up, so the tally of a model trained on A + B is the sum of theirs."""
    counts: Counter = Counter()
    counts.update({("class", c): n for c, n in model.class_counts.items()})
    counts.update({("total", c): n for c, n in model.class_totals.items()})
    for word, per_class in model.feature_counts.items():
        counts.update({("word", word, c): n for c, n in per_class.items()})
    return +counts


def wire(proba: dict[Any, float]) -> dict[str, float]:
    """A local ``predict_proba_one`` as the server sends it (``{True: p}`` -> ``{"true": p}``)."""
    return {json.dumps(label): p for label, p in proba.items()}


def assert_proba(served: Any, local: dict[Any, float]) -> None:
    """The served probabilities are the local model's, to 1e-9."""
    expected = wire(local)
    assert isinstance(served, dict) and served.keys() == expected.keys(), (served, expected)
    assert all(abs(served[label] - p) <= 1e-9 for label, p in expected.items()), (served, expected)


# --- talking to the servers ------------------------------------------------------------------------


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request) -> str:
    """The store the servers share: the redis server, or a Redis Cluster of three masters."""
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster")


def redis_env(url: str, prefix: str, **settings: str) -> dict[str, str]:
    """A server's environment: the redis store at ``url`` under ``prefix``, the shared secret,
    then ``settings`` (``SNAPSHOT_EVERY="50"`` for FLASK_RIVER_ML_SNAPSHOT_EVERY)."""
    env = {
        "FLASK_RIVER_ML_STORAGE_URL": url,
        "FLASK_RIVER_ML_REDIS_PREFIX": prefix,
        "FLASK_RIVER_ML_SHELVE_SECRET_KEY": SECRET,
    }
    env.update({f"FLASK_RIVER_ML_{key}": value for key, value in settings.items()})
    return env


def call(method: str, url: str, json_body: Any = None, data: bytes | None = None) -> requests.Response:
    """One request on a connection of its own: each new connection goes to whichever worker
    accepts it first, so requests sent this way from several threads spread over the workers."""
    return requests.request(method, url, json=json_body, data=data, headers={"Connection": "close"}, timeout=30)


def upload(url: str, name: str, model: Any) -> None:
    response = call("POST", f"{url}/api/model/binary/{name}/", data=dill.dumps(model))
    assert response.status_code == 201, response.text
    assert response.json() == {"name": name}


def delete(url: str, name: str) -> None:
    response = call("DELETE", f"{url}/api/model/{name}/")
    assert response.status_code == 200, response.text


def download(url: str, name: str) -> Any:
    """The served model, as riverapi's download_model gets it."""
    response = call("GET", f"{url}/api/model/download/{name}/")
    assert response.status_code == 200, response.text
    return dill.loads(response.content)


def model_json(url: str, route: str, name: str) -> Any:
    """GET /api/<route>/?model=<name>: metrics or stats."""
    response = call("GET", f"{url}/api/{route}/?model={name}")
    assert response.status_code == 200, response.text
    return response.json()


def learn(url: str, name: str, sample: Sample) -> requests.Response:
    x, y = sample
    return call("POST", f"{url}/api/learn/", {"model": name, "features": x, "ground_truth": y})


def predict(url: str, name: str, x: dict[str, Any]) -> requests.Response:
    return call("POST", f"{url}/api/predict/", {"model": name, "features": x})


def learn_each(url: str, name: str, samples: Sequence[Sample]) -> list[int]:
    """Learn every sample, from 8 threads on fresh connections; the statuses."""
    return statuses(in_parallel(lambda sample: learn(url, name, sample), samples))


def predict_each(url: str, name: str, samples: Sequence[Sample]) -> list[requests.Response]:
    """Predict every sample's features, from 8 threads on fresh connections."""
    return in_parallel(lambda sample: predict(url, name, sample[0]), samples)


def client_session() -> requests.Session:
    """A client's session that closes its connection after each request, so that requests
    spread over the workers as behind a load balancer: a kept-alive connection stays with the
    worker that accepted it, and one worker may well accept every connection opened at once."""
    session = requests.Session()
    session.headers["Connection"] = "close"
    return session


def statuses(responses: Sequence[requests.Response]) -> list[int]:
    return [response.status_code for response in responses]


def in_parallel(function: Callable[[Any], Any], items: Sequence[Any], threads: int = 8) -> list[Any]:
    """``function`` over ``items`` from ``threads`` threads; the results in order."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, items))


def learn_from_threads(urls: Sequence[str], name: str, samples: Sequence[Sample], threads: int) -> list[int]:
    """Send every sample as a learn from ``threads`` threads started together, each with a
    session of its own, thread ``i`` to server ``urls[i % len(urls)]``; every status."""
    start = threading.Barrier(threads)

    def client(i: int) -> list[int]:
        url = urls[i % len(urls)]
        start.wait()
        with client_session() as session:
            return [
                session.post(
                    f"{url}/api/learn/", json={"model": name, "features": x, "ground_truth": y}, timeout=30
                ).status_code
                for x, y in samples[i::threads]
            ]

    return list(itertools.chain.from_iterable(in_parallel(client, range(threads), threads)))


def on_every_worker(server: Server, send: Callable[[int], requests.Response], path: str) -> list[requests.Response]:
    """Call ``send(0)``, ``send(1)``, ... from 8 threads, in rounds of :data:`ROUND`, until each
    of the server's workers has answered one of them (``path`` is what ``send`` requests, as the
    access log has it); every response, in order."""
    workers = server.worker_pids()
    before = len(server.requests())
    responses: list[requests.Response] = []
    for _ in range(5):
        responses += in_parallel(send, range(len(responses), len(responses) + ROUND))
        answered = {entry.pid for entry in server.requests()[before:] if entry.path == path}
        assert answered <= workers, (answered, workers)
        if answered == workers:
            return responses
    pytest.fail(f"{len(responses)} requests reached only the workers {answered} of {workers}.")


def assert_clean(server: Server, workers: int) -> None:
    """No traceback nor error in the server's log, no request answered with a 5xx, and the
    workers it started with all there still (none died and was replaced)."""
    answered = server.requests()
    log = server.log_text()
    assert "Traceback" not in log, log
    assert "[ERROR]" not in log and "[CRITICAL]" not in log, log
    assert not [entry for entry in answered if entry.status >= 500], log
    assert len(server.worker_pids()) == workers, log


# --- the tests -----------------------------------------------------------------------------------


def test_four_workers_learn_into_one_model(tmp_path, redis_prefix, store):
    """600 learns from 12 threads through 4 workers: every one acknowledged, the served model
    holds exactly the counts of a local model trained on the 600 samples, every worker learnt
    some and predicts as that model does, and the stats count every call once."""
    name = "shared-counts"
    samples = make_samples(1, 600)
    probes = make_samples(2, 5 * ROUND)
    local = trained(samples)
    env = redis_env(store, redis_prefix, SNAPSHOT_EVERY="100")
    with serve(tmp_path, env, workers=4, threads=1, access_log=True) as server:
        upload(server.url, name, new_model())

        assert learn_from_threads([server.url], name, samples, threads=12) == [201] * len(samples)
        learners = {entry.pid for entry in server.requests() if entry.path == "/api/learn/"}
        assert learners == server.worker_pids()
        assert tally(download(server.url, name)) == tally(local)

        responses = on_every_worker(server, lambda i: predict(server.url, name, probes[i][0]), "/api/predict/")
        for response, (x, _) in zip(responses, probes, strict=False):
            assert response.status_code == 201, response.text
            assert_proba(response.json()["prediction"], local.predict_proba_one(x))

        stats = model_json(server.url, "stats", name)
        assert stats["learn"]["n_calls"] == len(samples)
        assert stats["predict"]["n_calls"] == len(responses)
        assert_clean(server, 4)


def test_two_servers_share_one_model(tmp_path, redis_prefix, store):
    """Two servers ("hosts": 2 workers and a folder each) on one redis learn into the same model
    at the same time; both then hold the local model's counts, predict identically and as it
    does, and report the same metrics and stats."""
    name = "two-hosts"
    samples = make_samples(3, 400)
    probes = make_samples(4, 60)
    local = trained(samples)
    env = redis_env(store, redis_prefix, SNAPSHOT_EVERY="100")
    with (
        serve(tmp_path / "a", env, workers=2, access_log=True) as first,
        serve(tmp_path / "b", env, workers=2, access_log=True) as second,
    ):
        hosts = (first, second)
        upload(first.url, name, new_model())
        assert learn_from_threads([first.url, second.url], name, samples, threads=12) == [201] * len(samples)

        for server in hosts:
            assert tally(download(server.url, name)) == tally(local)
        predictions = [[r.json()["prediction"] for r in predict_each(server.url, name, probes)] for server in hosts]
        assert predictions[0] == predictions[1]
        for served, (x, _) in zip(predictions[0], probes, strict=True):
            assert_proba(served, local.predict_proba_one(x))

        # Asked several times on fresh connections: whichever worker of either host answers.
        metrics = [model_json(server.url, "metrics", name) for server in hosts for _ in range(4)]
        assert metrics[0].keys() == BINARY_METRICS
        assert all(served == metrics[0] for served in metrics), metrics
        stats = [model_json(server.url, "stats", name) for server in hosts]
        assert stats[0] == stats[1]
        assert stats[0]["learn"]["n_calls"] == len(samples)
        assert stats[0]["predict"]["n_calls"] == 2 * len(probes)
        for server in hosts:
            assert_clean(server, 2)


def test_acknowledged_learns_survive_a_crash(tmp_path, redis_prefix, store):
    """The whole server (master and workers) is killed with SIGKILL under load from 8 threads.
    A new server on the same redis serves every learn that was answered 201: its counts are at
    least those of a local model trained on the acknowledged samples, at most those of one
    trained on these and the samples in flight at the kill (exactly: the acknowledged ones plus
    some of those in flight), and it goes on learning and predicting."""
    name = "crash-proof"
    samples = make_samples(5, 4000)
    env = redis_env(store, redis_prefix, SNAPSHOT_EVERY="50")
    threads = 8
    acknowledged: list[Sample] = []
    in_flight: list[Sample] = []
    refused: list[tuple[int, str]] = []

    def client(url: str, part: Sequence[Sample]) -> None:
        """Learn until the server is gone; the learn that fails then is in flight."""
        with client_session() as session:
            for x, y in part:
                try:
                    response = session.post(
                        f"{url}/api/learn/", json={"model": name, "features": x, "ground_truth": y}, timeout=30
                    )
                except requests.RequestException:
                    in_flight.append((x, y))
                    return
                if response.status_code == 201:
                    acknowledged.append((x, y))
                else:
                    refused.append((response.status_code, response.text))

    with serve(tmp_path / "crashed", env, workers=2, new_session=True) as server:
        upload(server.url, name, new_model())
        clients = [threading.Thread(target=client, args=(server.url, samples[i::threads])) for i in range(threads)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        for thread in clients:
            thread.join(timeout=30)
    assert not refused
    assert len(acknowledged) >= 300
    # Every thread was stopped by the kill, with one learn sent or about to be.
    assert len(in_flight) == threads

    with serve(tmp_path / "restarted", env, workers=2, access_log=True) as server:
        served = tally(download(server.url, name))
        low, high = tally(trained(acknowledged)), tally(trained(acknowledged + in_flight))
        for key in low.keys() | high.keys() | served.keys():
            assert low[key] <= served[key] <= high[key], (key, low[key], served[key], high[key])
        committed = [
            list(subset)
            for size in range(len(in_flight) + 1)
            for subset in itertools.combinations(in_flight, size)
            if sum((tally(trained([sample])) for sample in subset), low) == served
        ]
        assert committed, "the served counts are not those of the acknowledged samples plus some in flight"
        learns = model_json(server.url, "stats", name)["learn"]["n_calls"]
        assert len(acknowledged) <= learns <= len(acknowledged) + len(in_flight)

        extra, probes = make_samples(6, 40), make_samples(7, 40)
        assert learn_each(server.url, name, extra) == [201] * len(extra)
        local = trained(extra, trained(acknowledged + committed[0]))
        assert tally(download(server.url, name)) == tally(local)
        for response, (x, _) in zip(predict_each(server.url, name, probes), probes, strict=True):
            assert response.status_code == 201, response.text
            assert_proba(response.json()["prediction"], local.predict_proba_one(x))
        assert_clean(server, 2)


def test_every_worker_sees_upload_replace_and_delete(tmp_path, redis_prefix, store):
    """Upload, replace (delete, then upload another model under the name) and delete, each sent
    to one of 4 workers, are seen by every worker at its next request: after each change, rounds
    of predictions reach every worker, and every answer is the new model's (404 JSON once it is
    deleted). Learns in between go to the current model, from its first record on."""
    name = "replaced"
    first = trained(make_samples(8, 100))
    # The replacement learnt the opposite labels: its predictions differ from the first's.
    second = trained([(x, not y) for x, y in make_samples(9, 100)])
    probes = make_samples(10, 5 * ROUND)
    learnt = iter([make_samples(11, 20), make_samples(12, 20)])

    with serve(tmp_path, redis_env(store, redis_prefix), workers=4, threads=1, access_log=True) as server:

        def predict_on_every_worker() -> list[requests.Response]:
            return on_every_worker(server, lambda i: predict(server.url, name, probes[i][0]), "/api/predict/")

        def assert_every_worker_predicts_like(local: Any) -> None:
            for response, (x, _) in zip(predict_on_every_worker(), probes, strict=False):
                assert response.status_code == 201, response.text
                assert_proba(response.json()["prediction"], local.predict_proba_one(x))

        for model in (first, second):
            if model is second:
                delete(server.url, name)
            upload(server.url, name, model)
            local = dill.loads(dill.dumps(model))
            assert_every_worker_predicts_like(local)
            samples = next(learnt)
            assert learn_each(server.url, name, samples) == [201] * len(samples)
            assert_every_worker_predicts_like(trained(samples, local))

        delete(server.url, name)
        for response in predict_on_every_worker():
            assert response.status_code == 404, response.text
            assert response.headers["Content-Type"] == "application/json"
            assert response.json() == {"message": f"No model named '{name}'."}
        assert_clean(server, 4)


def canonical(event: str, data: dict[str, Any]) -> str:
    """An event as one comparable string."""
    return json.dumps({"event": event, "data": data}, sort_keys=True)


def drain(subscription: Any, count: int) -> list[bytes]:
    """The ``count`` messages a subscription should get, after checking that no more come."""
    messages = []
    while len(messages) < count:
        message = subscription.get(timeout=5)
        assert message is not None, f"{len(messages)} messages of {count} came"
        messages.append(message)
    assert subscription.get(timeout=0.5) is None
    return messages


def test_events_from_every_worker_reach_a_subscriber_once(tmp_path, redis_prefix, make_app, store):
    """A subscriber in this process, on the server's redis as a stream would subscribe, gets every
    learn, predict and label handled by any of 4 workers exactly once, as {"event", "data"} with
    the documented payloads; a subscriber to the metrics gets one message per learn and label, carrying
    the model's name."""
    name = "watched"
    state = FlaskRiverML.state(make_app(RIVER_ML_STORAGE_URL=store, RIVER_ML_SHELVE_SECRET_KEY=SECRET))
    events = state.service.events.events.subscribe()
    metrics = state.service.events.metrics.subscribe()
    learnt = make_samples(13, 80)
    asked = make_samples(14, 40)
    mixed = [("learn", sample) for sample in learnt] + [("predict", sample) for sample in asked]
    random.Random(15).shuffle(mixed)

    with serve(tmp_path / "server", redis_env(store, redis_prefix), workers=4, threads=1, access_log=True) as server:
        upload(server.url, name, new_model())
        # Each worker asks redis whether anyone listens at most every 0.25 s.
        time.sleep(0.6)

        def send(item: tuple[str, Sample]) -> requests.Response:
            kind, sample = item
            return learn(server.url, name, sample) if kind == "learn" else predict(server.url, name, sample[0])

        responses = in_parallel(send, mixed)
        assert statuses(responses) == [201] * len(mixed)
        answers = zip(mixed, responses, strict=True)
        predicted = [(sample, response.json()) for (kind, sample), response in answers if kind == "predict"]
        labels = [{"model": name, "identifier": result["identifier"], "label": y} for (_, y), result in predicted]
        labelled = in_parallel(lambda body: call("POST", f"{server.url}/api/label/", body), labels)
        assert statuses(labelled) == [200] * len(labels)
        routes = ("/api/learn/", "/api/predict/", "/api/label/")
        assert {entry.pid for entry in server.requests() if entry.path in routes} == server.worker_pids()
        assert_clean(server, 4)

    expected = Counter(canonical("learn", {"model": name, "features": x, "ground_truth": y}) for x, y in learnt)
    for (x, y), result in predicted:
        data = {"model": name, "features": x, "prediction": result["prediction"]}
        expected[canonical("predict", data)] += 1
        expected[canonical("label", {**data, "ground_truth": y})] += 1
    received = [json.loads(message) for message in drain(events, sum(expected.values()))]
    assert all(message.keys() == {"event", "data"} for message in received), received
    for message in received:
        if message["event"] == "learn":
            # The prequential prediction: whatever the model said when that learn came.
            prediction = message["data"].pop("prediction")
            assert isinstance(prediction, dict) and set(prediction) <= {"true", "false"}, prediction
    got = Counter(canonical(message["event"], message["data"]) for message in received)
    assert got == expected, (got - expected, expected - got)

    scores = [json.loads(message) for message in drain(metrics, len(learnt) + len(asked))]
    assert all(score.keys() == BINARY_METRICS | {"model"} and score["model"] == name for score in scores), scores


class SourceAddress(HTTPAdapter):
    """Connects from another loopback address: another client, as the rate limit counts."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture
def limiter_cleanup(redis_url, redis_prefix) -> Iterator[None]:
    """flask-limiter keeps its counters under LIMITS:LIMITER/<prefix>/..., outside the prefix
    that ``redis_prefix`` cleans up."""
    yield
    client = redis.Redis.from_url(redis_url)
    counters = list(client.scan_iter(match=f"LIMITS:LIMITER/{redis_prefix}*"))
    if counters:
        client.delete(*counters)
    client.close()


def test_rate_limit_holds_across_workers(tmp_path, redis_url, redis_prefix, limiter_cleanup):
    """With a limit of 20 a minute, 30 requests of one client spread over 4 workers get exactly
    20 answers and 10 JSON 429s with Retry-After: the workers count in one redis."""
    name = "limited"
    client = "127.0.0.2"
    env = redis_env(redis_url, redis_prefix, VIEW_RATE_LIMIT_DISABLE="false", VIEW_RATE_LIMIT="20/m")
    with serve(tmp_path, env, workers=4, threads=1, access_log=True) as server:
        # From 127.0.0.1, like the server's start-up checks: another client.
        upload(server.url, name, new_model())

        def send(sample: Sample) -> requests.Response:
            with client_session() as session:
                session.mount("http://", SourceAddress(client))
                body = {"model": name, "features": sample[0]}
                return session.post(f"{server.url}/api/predict/", json=body, timeout=30)

        responses = in_parallel(send, make_samples(16, 30), threads=6)
        assert sorted(statuses(responses)) == [201] * 20 + [429] * 10
        for response in responses:
            if response.status_code == 429:
                assert response.headers["Content-Type"] == "application/json"
                assert isinstance(response.json()["message"], str)
                assert 0 < int(response.headers["Retry-After"]) <= 60
        answered = [entry for entry in server.requests() if entry.address == client]
        assert len(answered) == 30
        assert len({entry.pid for entry in answered}) > 1, answered
        assert_clean(server, 4)

"""A store that knows itself: generations are unique over the store's whole life, its loss
included, so a replica never trusts a model, a log or a snapshot of another store's life.

A store loses its data when redis restarts without persistence, is flushed, or an SQLite file
is deleted; it goes back in time when restored from an older copy. Each test here does one of
these to a store shared by two apps (two server processes) or by the workers of a gunicorn
server on a private redis, and checks that every acknowledged learn is applied on every
replica and that no stale replica's snapshot overwrites the newer model.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dill
import pytest
import redis
import requests
from redis_server import RedisServer
from river import datasets, linear_model, naive_bayes, preprocessing
from servers import Server, serve
from stores import append

from flask_river_ml import FlaskRiverML, layout
from flask_river_ml.engine.entries import following

SECRET = "test-store-identity-shared-secret"


def pipeline() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def trained(samples: list[tuple[dict, float]]) -> Any:
    model = pipeline()
    for x, y in samples:
        model.learn_one(x, y)
    return model


def generation(app, name: str) -> str:
    import json

    return json.loads(FlaskRiverML.state(app).backend.get(layout.model(name)))["generation"]


def lose_everything(url: str, prefix: str) -> None:
    """What a redis restarted without persistence holds for the apps of this test: nothing."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_the_next_generation_keeps_the_identity_and_counts():
    assert following(b"5f1c:41") == b"5f1c:42"
    # A new store, and one whose counter was written before generations had an identity.
    first, legacy = following(None).decode(), following(b"7").decode()
    assert first.endswith(":1") and legacy.endswith(":8")
    assert len({first.split(":")[0], legacy.split(":")[0], following(None).split(b":")[0].decode()}) == 3


@pytest.mark.parametrize("store", ["memory", "shelve", "redis"])
def test_generations_carry_one_identity_per_store_life(make_app, store):
    app = make_app(RIVER_ML_STORAGE_BACKEND=store)
    river_ml = FlaskRiverML()
    with app.app_context():
        river_ml.add_model(pipeline(), "regression", name="a")
        river_ml.add_model(pipeline(), "regression", name="b")
        river_ml.save_model(pipeline(), "a")
        a, b = generation(app, "a"), generation(app, "b")
        river_ml.delete_model("a")
        river_ml.add_model(pipeline(), "regression", name="a")
        again = generation(app, "a")
    identities = {a.split(":")[0], b.split(":")[0], again.split(":")[0]}
    assert len(identities) == 1 and len(identities.pop()) >= 16
    assert [int(g.split(":")[1]) for g in (b, a, again)] == [2, 3, 4]


@pytest.mark.redis
def test_a_store_that_lost_its_data_is_not_mistaken_for_the_old_one(make_app, redis_url, redis_prefix):
    """The store loses everything; the model is uploaded again under the same name. A process
    holding a replica of the old one applies every later learn to the new model, and its exit
    snapshot does not overwrite the new model with the old."""
    first, second = (make_app(RIVER_ML_STORAGE_BACKEND="redis", RIVER_ML_SNAPSHOT_EVERY=1000) for _ in range(2))
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(40))
    old, new = samples[:15], samples[15:]
    with first.app_context():
        river_ml.add_model(pipeline(), "regression", name="m")
        for x, y in old:
            river_ml.learn("m", ground_truth=y, features=x)
        stale = generation(first, "m")
    lose_everything(redis_url, redis_prefix)
    with second.app_context():
        river_ml.add_model(pipeline(), "regression", name="m")
        assert generation(second, "m") != stale
        for x, y in new[:5]:
            river_ml.learn("m", ground_truth=y, features=x)
    # The first process's exit snapshot: its replica is of the lost store and is not written.
    FlaskRiverML.state(first).engine.close()
    assert FlaskRiverML.state(second).backend.get(layout.snapshot_seq("m")) == b"0"
    for i, (x, y) in enumerate(new[5:]):
        with (first, second)[i % 2].app_context():
            assert river_ml.learn("m", ground_truth=y, features=x) == "Successful learn."
    local = trained(new)
    probes = [x for x, _ in samples[:8]]
    for app in (first, second):
        with app.app_context():
            for x in probes:
                assert river_ml.predict(x, "m")["prediction"] == pytest.approx(local.predict_one(x), abs=1e-9)
        FlaskRiverML.state(app).engine.close()
    third = make_app(RIVER_ML_STORAGE_BACKEND="redis")
    with third.app_context():
        for x in probes:
            assert river_ml.predict(x, "m")["prediction"] == pytest.approx(local.predict_one(x), abs=1e-9)


@pytest.mark.parametrize("store", ["memory", "shelve", "redis"])
def test_a_replica_past_the_end_of_a_restored_log_starts_again(make_app, store):
    """The store goes back to an older copy of itself: its log ends before records a replica
    applied. That replica's exit snapshot is not written, and its next learn reloads from the
    store and is applied after what the store holds."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=store)
    river_ml = FlaskRiverML()
    samples = list(datasets.TrumpApproval().take(12))
    with app.app_context():
        river_ml.add_model(pipeline(), "regression", name="m")
        for x, y in samples[:10]:
            river_ml.learn("m", ground_truth=y, features=x)
        state = FlaskRiverML.state(app)
        kept = [blob for seq, blob in state.backend.read(layout.log("m")) if seq <= 6]
        state.backend.delete_log(layout.log("m"))
        for blob in kept:
            append(state.backend, layout.log("m"), blob)
        state.engine.close()
        assert state.backend.get(layout.snapshot_seq("m")) == b"0"
        for x, y in samples[10:]:
            assert river_ml.learn("m", ground_truth=y, features=x) == "Successful learn."
        assert [seq for seq, _ in state.backend.read(layout.log("m"))] == list(range(1, 9))
        local = trained(samples[:6] + samples[10:])
        for x, _ in samples[:5]:
            assert river_ml.predict(x, "m")["prediction"] == pytest.approx(local.predict_one(x), abs=1e-9)


# --- a gunicorn server on a redis that loses its data --------------------------------------------


WORDS = "river stream model learn online drift batch label class tree forest window".split()


def text_samples(seed: int, count: int) -> list[tuple[dict[str, int], bool]]:
    """Word counts labelled by their words: a naive Bayes only counts them, so the model a
    server ends with does not depend on the order its workers applied them in."""
    rng = random.Random(seed)
    result = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(3, 8))
        counts = {word: words.count(word) for word in set(words)}
        result.append((counts, sum(1 if WORDS.index(w) % 2 else -1 for w in words) > 0))
    return result


def post(url: str, path: str, **kwargs: Any) -> requests.Response:
    # A connection per request: requests sent from several threads spread over the workers.
    return requests.post(f"{url}{path}", headers={"Connection": "close"}, timeout=30, **kwargs)


def parallel(function: Any, items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(function, items))


def upload(url: str, model: Any) -> None:
    response = post(url, "/api/model/binary/m/", data=dill.dumps(model))
    assert response.status_code == 201, response.text


def learn_all(url: str, samples: list[tuple[dict, bool]]) -> list[int]:
    def learn(sample: tuple[dict, bool]) -> int:
        body = {"model": "m", "features": sample[0], "ground_truth": sample[1]}
        return post(url, "/api/learn/", json=body).status_code

    return parallel(learn, samples)


def predict_everywhere(server: Server, probes: list[dict]) -> list[tuple[int, dict, Any]]:
    """Predict every probe, in rounds, until every worker has answered some; each answer as
    (the pid of the worker that gave it, from the access log; the probe; the prediction)."""
    workers = server.ready_pids()
    answered: list[tuple[int, dict, Any]] = []
    for round_ in range(5):
        tagged = [(f"{round_}-{i}", x) for i, x in enumerate(probes)]
        responses = parallel(
            lambda item: post(server.url, f"/api/predict/?probe={item[0]}", json={"model": "m", "features": item[1]}),
            tagged,
        )
        assert all(response.status_code == 201 for response in responses), [r.text for r in responses]
        pids = {entry.query.split("probe=")[1]: entry.pid for entry in server.requests() if "probe=" in entry.query}
        answered += [(pids[tag], x, r.json()["prediction"]) for (tag, x), r in zip(tagged, responses, strict=True)]
        if {pid for pid, _, _ in answered} >= workers:
            return answered
    pytest.fail(f"The predictions reached only the workers { ({pid for pid, _, _ in answered}) } of {workers}.")


def assert_predicts_as(server: Server, local: Any, probes: list[dict]) -> None:
    """Every worker of ``server`` predicts every probe as ``local`` does, to 1e-9."""
    for pid, x, prediction in predict_everywhere(server, probes):
        expected = {"true" if label else "false": p for label, p in local.predict_proba_one(x).items()}
        assert prediction.keys() == expected.keys(), (pid, prediction, expected)
        assert all(abs(prediction[k] - p) <= 1e-9 for k, p in expected.items()), (pid, prediction, expected)


@pytest.mark.gunicorn
@pytest.mark.redis
def test_a_flushed_redis_under_a_running_server(tmp_path):
    """Two gunicorn workers hold replicas of a model; the redis is flushed (a restart without
    persistence) and the model uploaded again under its name. 200 learns: every one answered
    201 and applied on both workers; after a restart of the server (whose workers snapshot
    at exit) the model is still exactly the 200 samples'."""
    old, new = text_samples(1, 60), text_samples(2, 200)
    probes = [x for x, _ in text_samples(3, 12)]
    local = naive_bayes.MultinomialNB()
    for x, y in new:
        local.learn_one(x, y)
    with RedisServer(tmp_path / "redis") as store:
        env = {
            "FLASK_RIVER_ML_STORAGE_BACKEND": "redis",
            "FLASK_RIVER_ML_REDIS_URL": store.url,
            "FLASK_RIVER_ML_SHELVE_SECRET_KEY": SECRET,
        }
        folder = tmp_path / "server"
        with serve(folder, env, workers=2, threads=4, access_log=True) as server:
            upload(server.url, naive_bayes.MultinomialNB())
            assert learn_all(server.url, old) == [201] * len(old)
            predict_everywhere(server, probes)  # both workers now hold a replica of the old model
            client = redis.Redis.from_url(store.url)
            client.flushall()
            client.close()
            upload(server.url, naive_bayes.MultinomialNB())
            assert learn_all(server.url, new) == [201] * len(new)
            assert_predicts_as(server, local, probes)
            assert "Traceback" not in server.log_text()
        # gunicorn stopped on SIGTERM: each worker snapshotted its replica at exit.
        with serve(folder, env, workers=2, threads=4, access_log=True) as server:
            assert_predicts_as(server, local, probes)
            assert "Traceback" not in server.log_text()

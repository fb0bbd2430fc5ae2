"""Learns sent at once to the workers of a gunicorn server, on a real store (a private redis, an
SQLite file): a learn's record is learnt where it lands in the log, so its commit is never
refused because another worker appended; nothing acknowledged is lost, a label consumes its
prediction once, and every worker serves the model and the metrics of river trained on the
log's samples in log order (the prequential run of the log, each sample predicted before it is
learnt).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import redis
import requests
from redis_server import RedisServer
from river import datasets
from servers import serve
from test_labels import Prequential, binary_model, spelled
from test_store_identity import SECRET, parallel, post, predict_everywhere, upload

from flask_river_ml import layout
from flask_river_ml.serialization import Codec
from flask_river_ml.storage import create_backend

SAMPLES = list(datasets.Phishing().take(300))


def evalsha_calls(url: str) -> int:
    """How many scripts the redis server ran (every commit is one), not counting the calls
    refused because it did not hold the script yet (redis-py then loads it and calls again)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))
    finally:
        client.close()


def logged_samples(url: str, store_root: Any) -> list[tuple[dict, Any, Any]]:
    """The samples of the model's log, in log order, as its records hold them: the features,
    the ground truth as sent, and the waiting prediction a label learns from (or None)."""
    backend = create_backend(url, root=str(store_root), prefix="river_ml:")
    codec = Codec(SECRET)
    try:
        samples = []
        for _, blob in backend.read(layout.log("m")):
            tag, (x, y, waiting, prediction) = codec.loads(blob)
            assert (tag, prediction) == ("learn", None)
            samples.append((x, y, waiting))
        return samples
    finally:
        backend.close()


def learn(url: str, sample: tuple[dict, Any]) -> int:
    return post(url, "/api/learn/", json={"model": "m", "features": sample[0], "ground_truth": sample[1]}).status_code


def label(url: str, identifier: str, y: Any) -> int:
    return post(url, "/api/label/", json={"model": "m", "identifier": identifier, "label": y}).status_code


def learnt(y: Any) -> bool:
    """The class a ground truth is learnt as: a label spelt as the JSON of a class is that class."""
    return {"true": True, "false": False}.get(y, y) if isinstance(y, str) else y


@pytest.mark.gunicorn
@pytest.mark.parametrize("store", ["redis", "shelve"])
def test_concurrent_learns_on_gunicorn_workers_lose_nothing_and_equal_river_in_log_order(tmp_path, store):
    """Three workers of two threads each take 250 learns from eight clients at once, half
    their labels spelt as the JSON of a class, and 20 labels of predictions, each sent twice at
    once. Every learn is answered 201, each prediction is labelled once, the log holds each
    sample once, and every worker serves the predictions and the metrics of a local river
    model trained on the log's samples in log order, to 1e-9. On redis every learn is exactly
    one commit, however many workers appended before it."""
    env = {"FLASK_RIVER_ML_STORAGE_BACKEND": store, "FLASK_RIVER_ML_SHELVE_SECRET_KEY": SECRET}
    folder = tmp_path / "server"
    with contextlib.ExitStack() as stack:
        if store == "redis":
            private = stack.enter_context(RedisServer(tmp_path / "redis"))
            url = env["FLASK_RIVER_ML_REDIS_URL"] = private.url
        else:
            url = f"sqlite:///{folder / 'instance' / 'river_ml.shelve'}"
        server = stack.enter_context(serve(folder, env, workers=3, threads=2, access_log=True))
        upload(server.url, binary_model())
        sent = [(x, spelled(y) if i % 2 else y) for i, (x, y) in enumerate(SAMPLES[:250])]
        before = evalsha_calls(url) if store == "redis" else 0
        assert parallel(lambda sample: learn(server.url, sample), sent) == [201] * len(sent)
        if store == "redis":
            assert evalsha_calls(url) - before == len(sent)
        # Predictions kept for their labels, then each labelled twice at once.
        waiting = []
        for x, y in SAMPLES[250:270]:
            response = post(server.url, "/api/predict/", json={"model": "m", "features": x})
            assert response.status_code == 201, response.text
            waiting.append((response.json()["identifier"], y))
        labels = parallel(lambda item: label(server.url, *item), [item for item in waiting for _ in range(2)])
        assert sorted(labels) == [200] * len(waiting) + [400] * len(waiting)
        logged = logged_samples(url, folder)
        assert len(logged) == len(sent) + len(waiting)
        assert sorted(json.dumps([x, y]) for x, y, w in logged if w is None) == sorted(
            json.dumps([x, y]) for x, y in sent
        )
        local, scores = binary_model(), Prequential()
        for x, y, kept in logged:
            proba = local.predict_proba_one(x) if kept is None else kept[2]
            scores.score(learnt(y), proba)
            local.learn_one(x, learnt(y))
        probes = [x for x, _ in SAMPLES[270:280]]
        for pid, x, prediction in predict_everywhere(server, probes):
            expected = {spelled(label): p for label, p in local.predict_proba_one(x).items()}
            assert prediction.keys() == expected.keys(), (pid, prediction, expected)
            assert all(abs(prediction[k] - p) <= 1e-9 for k, p in expected.items()), (pid, prediction, expected)
        for _ in range(6):
            response = requests.get(f"{server.url}/api/metrics/", params={"model": "m"}, timeout=30)
            scores.assert_served(response.json())
        stats = requests.get(f"{server.url}/api/stats/", params={"model": "m"}, timeout=30).json()
        assert stats["learn"]["n_calls"] == len(sent)
        assert "Traceback" not in server.log_text(), server.log_text()

"""No request kills a worker, and no failure leaves a model half-changed.

river's Rust quantile code (``RobustScaler() | LinearRegression()``) panics when its state
holds a NaN and a number: pyo3 raises ``PanicException``, a ``BaseException`` that passes
every ``except Exception``. Served by one sync gunicorn worker, such a panic used to kill the
worker and every request it held. Here one sync worker serves a model that panics, bodies
with NaN, Infinity and features nested 900 deep, while other clients learn and predict on
another model through the same server: every attack is answered 4xx, every other request
succeeds, and the same worker answers throughout.

JSON cannot carry a NaN to the model (the server refuses it), so the panic of a NaN learnt
after a number is shown in process, by two apps on one store (two server processes).
"""

from __future__ import annotations

import threading
from typing import Any

import dill
import pytest
import requests
from river import linear_model, naive_bayes, preprocessing
from servers import serve

from flask_river_ml import FlaskRiverML, ModelFailed

pytestmark = [pytest.mark.gunicorn]

NAN = float("nan")


def rust_model() -> Any:
    return preprocessing.RobustScaler() | linear_model.LinearRegression()


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def raw_learn(url: str, body: str) -> requests.Response:
    return requests.post(f"{url}/api/learn/", data=body, headers={"Content-Type": "application/json"}, timeout=30)


def word_samples(start: int, count: int) -> list[tuple[dict[str, int], bool]]:
    """Word counts labelled by parity: a naive Bayes only counts them, so the model does not
    depend on the order in which concurrent clients' learns arrive."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    return [({words[i % 5]: 1 + i % 3, words[(i * 7) % 5]: 1}, i % 2 == 0) for i in range(start, start + count)]


def test_one_sync_worker_survives_panics_nan_infinity_and_deep_nesting(tmp_path):
    # A model that learnt a NaN locally: its quantiles panic at the next number it learns.
    poisoned = rust_model()
    poisoned.learn_one({"x": NAN}, 1.0)
    # Learn bodies as an attacker writes them, not as json.dumps would.
    attacks = {
        "a NaN feature": '{"model": "rust", "features": {"x": NaN}, "ground_truth": 1.0}',
        "features nested 900 deep": f'{{"model": "rust", "features": {nested(900)}}}',
        "Infinity as ground truth": '{"model": "rust", "features": {"x": 1}, "ground_truth": Infinity}',
        "-Infinity as ground truth": '{"model": "rust", "features": {"x": 1}, "ground_truth": -Infinity}',
        "a number past float": '{"model": "rust", "features": {"x": 1e999}, "ground_truth": 1}',
        "a Rust panic": '{"model": "poisoned", "features": {"x": 2.0}, "ground_truth": 1.0}',
    }
    steady = word_samples(0, 120)
    with serve(tmp_path, workers=1, threads=1, access_log=True) as server:
        url = server.url
        uploads = [("regression", "rust", rust_model()), ("regression", "poisoned", poisoned)]
        uploads.append(("binary", "steady", naive_bayes.MultinomialNB()))
        for flavor, name, model in uploads:
            response = requests.post(f"{url}/api/model/{flavor}/{name}/", data=dill.dumps(model), timeout=30)
            assert response.status_code == 201, response.text
        local = rust_model()
        for x, y in [({"x": 1.0}, 2.0), ({"x": 3.0}, 5.0)]:
            assert (
                requests.post(
                    f"{url}/api/learn/", json={"model": "rust", "features": x, "ground_truth": y}, timeout=30
                ).status_code
                == 201
            )
            local.learn_one(x, y)
        [worker] = server.ready_pids()

        # Other clients learn and predict on another model all along.
        statuses: list[int] = []
        started = threading.Barrier(5)

        def client(samples: list[tuple[dict, bool]]) -> None:
            started.wait()
            with requests.Session() as session:
                for x, y in samples:
                    body = {"model": "steady", "features": x}
                    statuses.append(session.post(f"{url}/api/predict/", json=body, timeout=60).status_code)
                    body["ground_truth"] = y
                    statuses.append(session.post(f"{url}/api/learn/", json=body, timeout=60).status_code)

        clients = [threading.Thread(target=client, args=(steady[i::4],)) for i in range(4)]
        for thread in clients:
            thread.start()
        started.wait()
        answers = {}
        for _ in range(3):
            for name, body in attacks.items():
                response = raw_learn(url, body)
                answers.setdefault(name, []).append((response.status_code, response.json()["message"]))
        for thread in clients:
            thread.join()

        for name, got in answers.items():
            assert all(400 <= status < 500 for status, _ in got), (name, got)
        assert all("PanicException" in message for _, message in answers["a Rust panic"])
        assert statuses == [201] * (2 * len(steady))
        # The rust model learnt none of the attacks, and learns on.
        assert (
            requests.post(
                f"{url}/api/learn/", json={"model": "rust", "features": {"x": 2.0}, "ground_truth": 3.0}, timeout=30
            ).status_code
            == 201
        )
        local.learn_one({"x": 2.0}, 3.0)
        for x in ({"x": 0.5}, {"x": 2.5}):
            response = requests.post(f"{url}/api/predict/", json={"model": "rust", "features": x}, timeout=30)
            assert response.json()["prediction"] == pytest.approx(local.predict_one(x), abs=1e-9)
        counts = naive_bayes.MultinomialNB()
        for x, y in steady:
            counts.learn_one(x, y)
        probe = {"alpha": 2, "gamma": 1}
        response = requests.post(f"{url}/api/predict/", json={"model": "steady", "features": probe}, timeout=30)
        served = response.json()["prediction"]
        assert served["true"] == pytest.approx(counts.predict_proba_one(probe)[True], abs=1e-9)

        answered = server.requests()
        assert {entry.pid for entry in answered} == {worker}
        assert server.worker_pids() == {worker}
        assert not [entry for entry in answered if entry.status >= 500]
        assert "Traceback" not in server.log_text()


def test_a_rust_panic_in_process_is_skipped_by_both_processes(make_app, tmp_path):
    """A model whose Rust quantile learnt a NaN (outside the server, which refuses NaN) panics at
    the next number: ModelFailed, the replica rebuilt without the sample, and a second process
    on the same store skips it the same way."""
    instance = tmp_path / "shared"
    first, second = make_app(instance_path=instance), make_app(instance_path=instance)
    river_ml = FlaskRiverML()
    poisoned = rust_model()
    poisoned["RobustScaler"].learn_one({"x": NAN})  # the scaler only: the regression stays finite
    # Features without "x" leave its quantile alone: the model learns on from them.
    after = [({"z": 2.0}, 1.0), ({"z": 3.0}, 4.0), ({"z": 0.5}, 2.5)]
    with first.app_context():
        name = river_ml.add_model(poisoned, "regression")
    with second.app_context():
        river_ml.predict({"z": 1.0}, name)  # the second process holds a replica before the panic
    with first.app_context():
        with pytest.raises(ModelFailed, match="PanicException"):
            river_ml.learn(name, ground_truth=1.0, features={"x": 2.0})
        for x, y in after:
            assert river_ml.learn(name, ground_truth=y, features=x) == "Successful learn."
    local = poisoned
    for x, y in after:
        local.learn_one(x, y)
    probes = [{"z": 0.0}, {"z": 1.5}, {"z": 5.0}]
    expected = [local.predict_one(x) for x in probes]
    for app in (first, second):
        with app.app_context():
            assert [river_ml.predict(x, name)["prediction"] for x in probes] == pytest.approx(expected, abs=1e-9)
    third = make_app(instance_path=instance)  # replays the whole log, the panic included
    with third.app_context():
        assert [river_ml.predict(x, name)["prediction"] for x in probes] == pytest.approx(expected, abs=1e-9)
        assert river_ml.stats(name)["learn"]["n_calls"] == len(after)

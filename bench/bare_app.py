"""The ceiling of bench/served.py: a Flask app doing the server's river work on models in memory.

Served like the example app, from the repository's root (``bench`` is then a namespace
package and nothing in ``bench/`` shadows the standard library), by the same WSGI server as
the configurations it is compared with::

    BENCH_MODELS_DIR=<folder> gunicorn --bind 127.0.0.1:8001 --workers 1 bench.bare_app:app

It holds every model of ``BENCH_MODELS_DIR`` (``<name>.pkl``, the very bytes bench/served.py
uploads to the servers), each with the binary flavor's five metrics, and answers the same
bodies with the same JSON as the extension:

* POST /api/learn/ ``{model, features, ground_truth}``: ``predict_proba_one``, then
  ``learn_one``, then the metrics' updates (what the extension does per learn); 201
  ``"Successful learn."``.
* POST /api/predict/ ``{model, features}``: ``predict_proba_one`` and its most probable
  label; 201 ``{model, prediction, identifier}`` with a fresh identifier, as the extension's
  answer when it keeps the prediction for a label.

No storage, no validation beyond what a handler needs: what a Python WSGI stack can do with
river's work at best.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import dill
from flask import Flask, Response, request

from bench.models import binary_metrics, learn, predict

app = Flask(__name__)
models: dict[str, tuple[Any, list[Any]]] = {
    path.stem: (dill.loads(path.read_bytes()), binary_metrics())
    for path in sorted(Path(os.environ["BENCH_MODELS_DIR"]).glob("*.pkl"))
}
lock = threading.Lock()


def _json(data: Any, status: int = 200) -> Response:
    return app.response_class(app.json.dumps(data), status=status, mimetype="application/json")


def _model(payload: dict) -> tuple[Any, list[Any]]:
    return models[payload["model"]]


@app.get("/api/")
def info() -> Response:
    return _json({"id": "bare_flask", "status": "running", "models": sorted(models)})


@app.post("/api/learn/")
def learn_route() -> Response:
    payload = request.get_json(force=True)
    model, metric_list = _model(payload)
    with lock:
        learn(model, metric_list, payload["features"], payload["ground_truth"])
    return _json("Successful learn.", 201)


@app.post("/api/predict/")
def predict_route() -> Response:
    payload = request.get_json(force=True)
    model, _ = _model(payload)
    with lock:
        proba, _label = predict(model, payload["features"])
    return _json({"model": payload["model"], "prediction": proba, "identifier": str(uuid.uuid4())}, 201)

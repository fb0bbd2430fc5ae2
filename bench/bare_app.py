"""The "bare Flask" baseline of bench/served.py: river called directly on a model in memory.

Served the same way as the example app (from the repository's root, so that ``bench`` is a
namespace package and nothing in ``bench/`` shadows the standard library)::

    gunicorn --bind 127.0.0.1:8001 --workers 1 bench.bare_app:app

POST /api/learn/ takes the same body as the extension's learn (``{model, features,
ground_truth}``; ``model`` is ignored), calls ``predict_proba_one`` then ``learn_one`` on the
one model it holds, and answers 201 with the same JSON as the extension. No metrics, no
storage, no validation beyond what a handler needs: the ceiling of a Python WSGI stack.
"""

from __future__ import annotations

import threading

from flask import Flask, Response, request
from river import linear_model, preprocessing

app = Flask(__name__)
model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
lock = threading.Lock()


@app.get("/api/")
def info() -> Response:
    return app.json.response({"id": "bare_flask", "status": "running"})


@app.post("/api/learn/")
def learn() -> tuple[Response, int]:
    payload = request.get_json(force=True)
    x, y = payload["features"], payload["ground_truth"]
    with lock:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    return app.json.response("Successful learn."), 201

"""The HTTP API through Flask's test client, the way riverapi 0.0.21 calls it.

Sections: the routes and their payloads; every status code and error path; the settings that
shape the blueprint; malicious uploads; odd payloads that must never give a 500.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import subprocess
import sys
import time
from importlib.metadata import version
from typing import Any

import dill
import pytest
import river
import river.stream
from river import cluster, datasets, linear_model, preprocessing

MODEL = "served"
SAMPLES = list(datasets.TrumpApproval().take(20))
X, Y = SAMPLES[0]
PHISHING = list(datasets.Phishing().take(20))
ADJECTIVE_NOUN = re.compile(r"[a-z]+-[a-z]+")
FLAVORS = ("regression", "binary", "multiclass", "cluster", "neighbor", "custom")


# --- helpers -----------------------------------------------------------------------------------


def regressor():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def classifier():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def upload(client, model: Any, flavor: str = "regression", name: str | None = MODEL, prefix: str = "/api"):
    """Upload as riverapi does: raw dill bytes, no content type."""
    url = f"{prefix}/model/{flavor}/" + (f"{name}/" if name is not None else "")
    return client.post(url, data=dill.dumps(model))


def learn(client, x: dict, y: Any, name: str = MODEL, prefix: str = "/api"):
    return client.post(f"{prefix}/learn/", json={"model": name, "features": x, "ground_truth": y})


def predict(client, x: dict, name: str = MODEL, prefix: str = "/api", **extra: Any):
    return client.post(f"{prefix}/predict/", json={"model": name, "features": x, **extra})


def label(client, value: Any, identifier: Any, name: str = MODEL, prefix: str = "/api"):
    return client.post(f"{prefix}/label/", json={"model": name, "identifier": identifier, "label": value})


def metrics(client, name: str = MODEL) -> dict:
    response = client.get("/api/metrics/", json={"model": name})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def stats(client, name: str = MODEL) -> dict:
    response = client.get("/api/stats/", json={"model": name})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def served_model(client, samples=SAMPLES) -> None:
    """Upload the regressor MODEL and train it on ``samples`` over HTTP."""
    assert upload(client, regressor()).status_code == 201
    for x, y in samples:
        assert learn(client, x, y).status_code == 201


def assert_error(response, status: int, *fragments: str) -> dict:
    """``response`` is a JSON error with ``status`` whose message contains each fragment."""
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json", response.data[:500]
    body = response.get_json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


def assert_invalid(response, field: str) -> dict:
    """A 400 for an invalid payload: a message and ``errors`` naming ``field``."""
    body = assert_error(response, 400)
    assert isinstance(body.get("errors"), dict) and field in body["errors"], body
    assert all(isinstance(messages, list) and messages for messages in body["errors"].values()), body
    return body


def strict_json(response) -> Any:
    """The body parsed as strict JSON: ``NaN`` or ``Infinity`` literals fail."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(response.data, parse_constant=refuse)


def allowed(response) -> set[str]:
    return {method.strip() for method in response.headers["Allow"].split(",")}


class Reduce:
    """Pickles as the call ``func(*args)``: unpickling it runs ``func``.

    Callable only so that pickle accepts an instance of it as another one's ``func``; nested
    instances build call chains such as ``getattr(__import__("os"), "system")(command)``.
    """

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args: Any) -> Any:
        raise AssertionError("only ever unpickled")


def global_call(module: str, name: str, *args: Any) -> bytes:
    """A hand-written pickle of ``module.name(*args)``; ``name`` may be dotted (``os.system``)."""
    arguments = pickle.dumps(args, protocol=0)[:-1]  # without its STOP
    # PROTO 4 first: from protocol 4 on, pickle itself resolves dotted names.
    return b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n" + arguments + b"R."


def touch_command(marker) -> str:
    """A shell command that creates ``marker``."""
    return f"touch '{marker}'"


def write_code(marker) -> str:
    """Python source that creates ``marker``."""
    return f"open({str(marker)!r}, 'w').close()"


def appears(marker, seconds: float = 0.0) -> bool:
    """Whether ``marker`` exists now or within ``seconds`` (for payloads that spawn processes)."""
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def client(app):
    """A test client of an app with default settings, on each embedded backend."""
    return app.test_client()


@pytest.fixture
def client_with(make_app, backend_name):
    """A test client of an app built with extra settings, on each embedded backend."""

    def build(**config: Any):
        return make_app(RIVER_ML_STORAGE_BACKEND=backend_name, **config).test_client()

    return build


@pytest.fixture
def memory_client(make_app):
    """A test client on the memory backend (the unpickler does not depend on the backend)."""
    return make_app(RIVER_ML_STORAGE_BACKEND="memory").test_client()


# --- 1. routes and payloads --------------------------------------------------------------------


def test_service_info(client, backend_name):
    """GET /api/ describes the service: id, status, storage backend, river and package versions."""
    response = client.get("/api/")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert {"id", "status", "name", "description", "documentationUrl", "storage", "river_version", "version"} <= set(
        body
    )
    assert body["id"] == "flask_river_ml"
    assert body["status"] == "running"
    assert body["storage"] == backend_name
    assert body["river_version"] == river.__version__
    assert body["version"] == version("flask-river-ml")


def test_upload_with_name(client):
    """POST /api/model/<flavor>/<name>/ with raw dill bytes stores the model under that name."""
    response = upload(client, regressor(), name="my-model")
    assert response.status_code == 201
    assert response.get_json() == {"name": "my-model"}
    assert client.get("/api/models/").get_json() == {"models": ["my-model"]}


def test_upload_without_name_generates_adjective_noun(client):
    """POST /api/model/<flavor>/ generates an adjective-noun name and answers it."""
    response = upload(client, regressor(), name=None)
    assert response.status_code == 201
    name = response.get_json()["name"]
    assert ADJECTIVE_NOUN.fullmatch(name), name
    assert client.get("/api/models/").get_json() == {"models": [name]}


@pytest.mark.parametrize(
    "content_type",
    [None, "application/octet-stream", "application/json", "application/x-www-form-urlencoded", "text/plain"],
)
def test_upload_with_any_content_type(client, content_type):
    """The upload body is read as raw bytes whatever Content-Type comes with it."""
    response = client.post(f"/api/model/regression/{MODEL}/", data=dill.dumps(regressor()), content_type=content_type)
    assert response.status_code == 201 and response.get_json() == {"name": MODEL}


def test_get_model_json(client):
    """GET /api/model/<name>/ gives the parameters; a pipeline's top-level keys are its steps."""
    model = regressor()
    upload(client, model)
    response = client.get(f"/api/model/{MODEL}/")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == set(model.steps) == {"StandardScaler", "LinearRegression"}
    assert isinstance(body["LinearRegression"], dict) and "intercept_lr" in body["LinearRegression"]


def test_download_predicts_like_the_served_model(client):
    """GET /api/model/download/<name>/ is an octet-stream dill pickle of the trained model."""
    served_model(client)
    response = client.get(f"/api/model/download/{MODEL}/")
    assert response.status_code == 200
    assert response.mimetype == "application/octet-stream"
    model = dill.loads(response.data)
    for x, _ in SAMPLES[:5]:
        served = predict(client, x).get_json()["prediction"]
        assert served == pytest.approx(model.predict_one(x))
    assert model.predict_one(X) != 0.0  # trained, not a fresh copy


def test_models_listing_sorted(client):
    """GET /api/models/ lists every model name, sorted."""
    assert client.get("/api/models/").get_json() == {"models": []}
    for name in ("zeta", "alpha", "Mid-1", "beta.2"):
        assert upload(client, regressor(), name=name).status_code == 201
    response = client.get("/api/models/")
    assert response.status_code == 200
    assert response.get_json() == {"models": sorted(["zeta", "alpha", "Mid-1", "beta.2"])}


def test_learn(client):
    """POST /api/learn/ answers 201 with exactly the JSON string "Successful learn."."""
    upload(client, regressor())
    response = learn(client, X, Y)
    assert response.status_code == 201 and response.mimetype == "application/json"
    assert response.get_json() == "Successful learn."
    # Unsupervised: no ground truth (a clusterer).
    upload(client, cluster.KMeans(n_clusters=2, seed=1), "cluster", name="clusters")
    response = client.post("/api/learn/", json={"model": "clusters", "features": {"a": 1.0}})
    assert response.status_code == 201 and response.get_json() == "Successful learn."


def test_predict_with_identifier_is_201(client):
    """POST /api/predict/ answers 201 {model, prediction, identifier}, generated or given."""
    served_model(client, SAMPLES[:5])
    response = predict(client, X)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"model", "prediction", "identifier"}
    assert body["model"] == MODEL and isinstance(body["prediction"], float)
    assert isinstance(body["identifier"], str) and body["identifier"]
    given = predict(client, X, identifier="sample-1")
    assert given.status_code == 201 and given.get_json()["identifier"] == "sample-1"
    numbered = predict(client, X, identifier=7)
    assert numbered.status_code == 201 and numbered.get_json()["identifier"] == "7"


def test_predict_without_identifier_is_200(client_with):
    """With GENERATE_IDENTIFIERS off and no identifier given, predict answers 200 {model, prediction}."""
    client = client_with(RIVER_ML_GENERATE_IDENTIFIERS=False)
    served_model(client, SAMPLES[:5])
    response = predict(client, X)
    assert response.status_code == 200
    assert set(response.get_json()) == {"model", "prediction"}
    given = predict(client, X, identifier="kept")
    assert given.status_code == 201 and given.get_json()["identifier"] == "kept"


def test_label(client):
    """POST /api/label/ learns the stored prediction and answers 200 "Successful label."."""
    served_model(client, SAMPLES[:5])
    before = metrics(client)
    identifier = predict(client, SAMPLES[5][0]).get_json()["identifier"]
    response = label(client, SAMPLES[5][1], identifier)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == "Successful label."
    assert metrics(client) != before
    # An integer identifier addresses the same record as its string.
    assert predict(client, X, identifier="12").status_code == 201
    assert label(client, Y, 12).get_json() == "Successful label."


def test_learn_by_identifier_consumes_the_stored_prediction(client):
    """learn with an identifier uses the stored features and prediction, then the record is gone."""
    served_model(client, SAMPLES[:3])
    before = metrics(client)
    assert predict(client, X, identifier=7).status_code == 201
    response = client.post("/api/learn/", json={"model": MODEL, "identifier": "7", "ground_truth": Y})
    assert response.status_code == 201 and response.get_json() == "Successful learn."
    assert metrics(client) != before
    assert stats(client)["learn"]["n_calls"] == 4
    assert_error(label(client, Y, 7), 400, "7")


def test_metrics_model_in_json_body_and_query(client):
    """GET /api/metrics/ takes the model from a JSON body (riverapi) or the query string."""
    served_model(client, SAMPLES[:10])
    by_body = client.get("/api/metrics/", json={"model": MODEL})
    by_query = client.get(f"/api/metrics/?model={MODEL}")
    assert by_body.status_code == by_query.status_code == 200
    assert by_body.get_json() == by_query.get_json()
    values = by_body.get_json()
    assert set(values) == {"MAE", "RMSE", "SMAPE"}
    assert all(isinstance(value, float) and value > 0 for value in values.values())


def test_metrics_of_a_flavor_without_metrics_are_empty(client):
    """A cluster model has no metrics: {}."""
    upload(client, cluster.KMeans(n_clusters=2, seed=1), "cluster")
    client.post("/api/learn/", json={"model": MODEL, "features": {"a": 1.0}})
    assert metrics(client) == {}


def test_stats_model_in_json_body_and_query(client):
    """GET /api/stats/ counts learn and predict calls; the model from a JSON body or the query."""
    served_model(client, SAMPLES[:3])
    identifier = predict(client, X).get_json()["identifier"]
    label(client, Y, identifier)  # label is not timed
    by_body = client.get("/api/stats/", json={"model": MODEL})
    by_query = client.get("/api/stats/", query_string={"model": MODEL})
    assert by_body.status_code == by_query.status_code == 200
    body = by_body.get_json()
    assert body == by_query.get_json()
    assert set(body) == {"learn", "predict"}
    assert body["learn"]["n_calls"] == 3 and body["predict"]["n_calls"] == 1
    for kind in ("learn", "predict"):
        assert set(body[kind]) == {
            "n_calls",
            "mean_duration",
            "mean_duration_human",
            "ewm_duration",
            "ewm_duration_human",
        }
        assert isinstance(body[kind]["mean_duration"], int) and body[kind]["mean_duration"] > 0
        assert isinstance(body[kind]["ewm_duration"], int)
        assert re.fullmatch(r"(\d+(m|s|ms|μs|ns))+", body[kind]["mean_duration_human"])


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda client: client.delete("/api/model/", data={"model": MODEL}), id="form-body"),
        pytest.param(lambda client: client.delete(f"/api/model/{MODEL}/"), id="path"),
        pytest.param(lambda client: client.delete("/api/model/", json={"model": MODEL}), id="json-body"),
        pytest.param(lambda client: client.delete("/api/model/", query_string={"model": MODEL}), id="query"),
    ],
)
def test_delete_model(client, how):
    """DELETE /api/model/ with the name in a form body, JSON body or query, or in the path: 200 JSON."""
    served_model(client, SAMPLES[:3])
    upload(client, regressor(), name="kept")
    response = how(client)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert isinstance(response.get_json(), dict)
    assert client.get("/api/models/").get_json() == {"models": ["kept"]}
    assert_error(client.get(f"/api/model/{MODEL}/"), 404)
    # The name is free again, and the new model starts from nothing.
    assert upload(client, regressor()).status_code == 201
    assert stats(client)["learn"]["n_calls"] == 0


_NO_SLASH_CALLS = [
    ("GET", "/api", "none", 200),
    ("GET", "/api/models", "none", 200),
    ("POST", "/api/model/regression", "model", 201),
    ("POST", "/api/model/regression/fresh", "model", 201),
    ("GET", f"/api/model/{MODEL}", "none", 200),
    ("GET", f"/api/model/download/{MODEL}", "none", 200),
    ("POST", "/api/learn", "learn", 201),
    ("POST", "/api/predict", "predict", 201),
    ("POST", "/api/label", "label", 200),
    ("GET", "/api/metrics", "model-name", 200),
    ("GET", "/api/stats", "model-name", 200),
    ("DELETE", f"/api/model/{MODEL}", "none", 200),
    ("DELETE", "/api/model", "form", 200),
]


@pytest.mark.parametrize("slash", ["/", ""], ids=["with-slash", "without-slash"])
@pytest.mark.parametrize(
    ("method", "path", "body", "status"), _NO_SLASH_CALLS, ids=[f"{m} {p}" for m, p, *_ in _NO_SLASH_CALLS]
)
def test_every_route_with_and_without_trailing_slash(client, method, path, body, status, slash):
    """Every route answers with and without its final slash, never with a redirect."""
    served_model(client, SAMPLES[:3])
    predict(client, X, identifier="waiting")
    kwargs = {
        "none": {},
        "model": {"data": dill.dumps(regressor())},
        "learn": {"json": {"model": MODEL, "features": X, "ground_truth": Y}},
        "predict": {"json": {"model": MODEL, "features": X}},
        "label": {"json": {"model": MODEL, "identifier": "waiting", "label": Y}},
        "model-name": {"json": {"model": MODEL}},
        "form": {"data": {"model": MODEL}},
    }[body]
    response = client.open(path + slash, method=method, **kwargs)
    assert response.status_code not in (301, 302, 307, 308)
    assert response.status_code == status, response.data[:500]
    assert "Location" not in response.headers


# --- 2. status codes and error paths -----------------------------------------------------------


@pytest.mark.parametrize("route", ["/api/learn/", "/api/predict/", "/api/label/"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": "served", "features": ', id="truncated-json"),
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b'[{"model": "served"}]', id="json-array"),
        pytest.param(b'"served"', id="json-string"),
        pytest.param(b"42", id="json-number"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(client, route, body):
    """A body that is not a JSON object answers 400 with a message."""
    served_model(client, SAMPLES[:1])
    assert_error(client.post(route, data=body, content_type="application/json"), 400)


def test_json_array_body_without_content_type_is_400(client):
    """A JSON array sent with no content type is refused the same way."""
    assert_error(client.post("/api/predict/", data=b"[1, 2, 3]"), 400)


_INVALID_FIELDS = [
    ("/api/learn/", {"model": MODEL, "features": [1, 2], "ground_truth": 1.0}, "features"),
    ("/api/learn/", {"model": MODEL, "features": "abc", "ground_truth": 1.0}, "features"),
    ("/api/learn/", {"model": MODEL, "ground_truth": 1.0}, "features"),
    ("/api/learn/", {"model": 5, "features": X}, "model"),
    ("/api/learn/", {"features": X, "ground_truth": 1.0}, "model"),
    ("/api/learn/", {"model": MODEL, "features": X, "identifier": True}, "identifier"),
    ("/api/learn/", {"model": MODEL, "features": X, "unknown": 1}, "unknown"),
    ("/api/predict/", {"model": MODEL, "features": 3}, "features"),
    ("/api/predict/", {"model": MODEL, "features": None}, "features"),
    ("/api/predict/", {"model": MODEL}, "features"),
    ("/api/predict/", {"model": ["served"], "features": X}, "model"),
    ("/api/predict/", {"model": MODEL, "features": X, "identifier": True}, "identifier"),
    ("/api/predict/", {"model": MODEL, "features": X, "identifier": 1.5}, "identifier"),
    ("/api/predict/", {"model": MODEL, "features": X, "identifier": ""}, "identifier"),
    ("/api/predict/", {"model": MODEL, "features": X, "ground_truth": 1.0}, "ground_truth"),
    ("/api/label/", {"model": MODEL, "identifier": "x"}, "label"),
    ("/api/label/", {"model": MODEL, "identifier": "x", "label": None}, "label"),
    ("/api/label/", {"model": MODEL, "label": 1.0}, "identifier"),
    ("/api/label/", {"model": MODEL, "identifier": False, "label": 1.0}, "identifier"),
    ("/api/label/", {"model": MODEL, "identifier": 2.5, "label": 1.0}, "identifier"),
    ("/api/label/", {"model": {"name": MODEL}, "identifier": "x", "label": 1.0}, "model"),
    ("/api/label/", {"model": MODEL, "identifier": "x", "label": 1.0, "features": X}, "features"),
]


@pytest.mark.parametrize(
    ("route", "payload", "field"),
    _INVALID_FIELDS,
    ids=[f"{route.split('/')[2]}-{field}-{i}" for i, (route, _, field) in enumerate(_INVALID_FIELDS)],
)
def test_invalid_field_is_400_with_errors(client, route, payload, field):
    """A missing, wrong-typed or unknown field answers 400 with errors naming the field."""
    served_model(client, SAMPLES[:1])
    assert_invalid(client.post(route, json=payload), field)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.get("/api/metrics/"), id="metrics-no-model"),
        pytest.param(lambda c: c.get("/api/metrics/", json={"model": 3}), id="metrics-model-number"),
        pytest.param(lambda c: c.get("/api/stats/", json={"model": None}), id="stats-model-null"),
        pytest.param(lambda c: c.get("/api/stats/", json={"model": ["served"]}), id="stats-model-list"),
        pytest.param(lambda c: c.delete("/api/model/"), id="delete-no-model"),
        pytest.param(lambda c: c.delete("/api/model/", json={"model": 1}), id="delete-model-number"),
    ],
)
def test_model_name_missing_or_wrong_type_is_400(client, call):
    """metrics, stats and DELETE /api/model/ without a usable model name answer 400 with errors."""
    served_model(client, SAMPLES[:1])
    assert_invalid(call(client), "model")


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("POST", "/api/learn/", {"json": {"model": "ghost", "features": X, "ground_truth": Y}}),
        ("POST", "/api/learn/", {"json": {"model": "ghost", "features": X}}),
        ("POST", "/api/learn/", {"json": {"model": "ghost", "identifier": "i", "ground_truth": Y}}),
        ("POST", "/api/predict/", {"json": {"model": "ghost", "features": X}}),
        ("POST", "/api/label/", {"json": {"model": "ghost", "identifier": "i", "label": Y}}),
        ("GET", "/api/metrics/", {"json": {"model": "ghost"}}),
        ("GET", "/api/metrics/", {"query_string": {"model": "ghost"}}),
        ("GET", "/api/stats/", {"json": {"model": "ghost"}}),
        ("GET", "/api/stats/", {"query_string": {"model": "ghost"}}),
        ("GET", "/api/model/ghost/", {}),
        ("GET", "/api/model/download/ghost/", {}),
        ("DELETE", "/api/model/ghost/", {}),
        ("DELETE", "/api/model/", {"data": {"model": "ghost"}}),
        ("DELETE", "/api/model/", {"json": {"model": "ghost"}}),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(value) if isinstance(value, dict) else None,
)
def test_unknown_model_is_404(client, method, url, kwargs):
    """Every route answers an unknown model with 404 {"message": "No model named '<name>'."}."""
    served_model(client, SAMPLES[:1])
    response = client.open(url, method=method, **kwargs)
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.get_json() == {"message": "No model named 'ghost'."}


def test_unknown_flavor_is_400_listing_the_flavors(client):
    """An unknown flavor answers 400 and lists the flavors; nothing is stored."""
    body = assert_error(upload(client, regressor(), "regresion"), 400, "regresion")
    for flavor in FLAVORS:
        assert flavor in body["message"]
    assert_error(upload(client, regressor(), "regresion", name=None), 400)
    assert client.get("/api/models/").get_json() == {"models": []}


def test_creme_flavor_is_400(client):
    """The creme flavor, accepted by riverapi, answers 400: creme is retired."""
    assert_error(upload(client, regressor(), "creme"), 400, "creme")
    assert_error(upload(client, regressor(), "creme", name=None), 400, "creme")
    assert client.get("/api/models/").get_json() == {"models": []}


@pytest.mark.parametrize("model", [linear_model.LinearRegression, regressor], ids=["bare", "pipeline"])
def test_regressor_as_binary_is_400_naming_the_missing_method(client, model):
    """A model the flavor cannot serve answers 400 saying which method is missing."""
    assert_error(upload(client, model(), "binary"), 400, "predict_proba_one")
    assert_error(upload(client, {"not": "a model"}, "custom"), 400, "learn_one")
    assert client.get("/api/models/").get_json() == {"models": []}


def test_duplicate_name_is_409(client):
    """Uploading under an existing name answers 409 and keeps the stored model."""
    served_model(client, SAMPLES[:5])
    before = predict(client, X).get_json()["prediction"]
    assert_error(upload(client, regressor()), 409, MODEL)
    assert predict(client, X).get_json()["prediction"] == before


def test_identifier_of_another_model_is_400(client):
    """An identifier stored for one model cannot label another (400); it still labels its own."""
    served_model(client, SAMPLES[:3])
    upload(client, regressor(), name="other")
    identifier = predict(client, X).get_json()["identifier"]
    assert_error(label(client, Y, identifier, name="other"), 400, identifier)
    assert label(client, Y, identifier).status_code == 200


def test_second_label_is_400(client):
    """A second label for the same identifier answers 400."""
    served_model(client, SAMPLES[:3])
    identifier = predict(client, X).get_json()["identifier"]
    assert label(client, Y, identifier).status_code == 200
    assert_error(label(client, Y, identifier), 400, identifier)
    assert_error(label(client, Y, "never-made"), 400, "never-made")


def test_a_waiting_prediction_is_never_replaced(client):
    """A predict under an identifier that already waits for its label answers 409: replaced,
    the label that comes for it would train the model on someone else's features. Once
    labelled, the identifier may be used again."""
    served_model(client, SAMPLES[:3])
    assert predict(client, X, identifier="order-42").status_code == 201
    other = {key: value * 1000 for key, value in X.items()}
    assert_error(predict(client, other, identifier="order-42"), 409, "order-42", "already waits")
    assert label(client, Y, "order-42").status_code == 200
    local = regressor()
    for x, y in [*SAMPLES[:3], (X, Y)]:
        local.learn_one(x, y)
    # The label trained on the features of the first predict, not the refused one's.
    assert predict(client, other).get_json()["prediction"] == pytest.approx(local.predict_one(other))
    assert predict(client, other, identifier="order-42").status_code == 201


@pytest.mark.parametrize(
    ("flavor", "model", "training", "falsy"),
    [
        pytest.param("regression", regressor, [(x, 100.0) for x, _ in SAMPLES[:5]], 0, id="regression-0"),
        pytest.param("binary", classifier, [], False, id="binary-false"),
        pytest.param("binary", classifier, [], 0, id="binary-0"),
    ],
)
def test_falsy_labels_are_accepted_and_scored(client, flavor, model, training, falsy):
    """Labels 0 and false are real values: label and learn answer success and the metrics move."""
    upload(client, model(), flavor)
    features = PHISHING[0][0] if flavor == "binary" else X
    for x, y in training:
        assert learn(client, x, y).status_code == 201
    before = metrics(client)
    identifier = predict(client, features).get_json()["identifier"]
    response = label(client, falsy, identifier)
    assert response.status_code == 200, response.get_json()
    after_label = metrics(client)
    assert after_label != before
    response = learn(client, features, falsy)
    assert response.status_code == 201, response.get_json()
    assert metrics(client) != after_label


def test_oversize_upload_is_413_and_nothing_is_stored(client_with):
    """A body over RIVER_ML_UPLOAD_MAX_BYTES answers 413 JSON and stores nothing."""
    client = client_with(RIVER_ML_UPLOAD_MAX_BYTES=64)
    assert len(dill.dumps(regressor())) > 64
    assert_error(upload(client, regressor()), 413)
    assert_error(upload(client, regressor(), name=None), 413)
    assert client.get("/api/models/").get_json() == {"models": []}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x01garbage bytes\xff", id="garbage"),
        pytest.param(dill.dumps(regressor())[:40], id="truncated-pickle"),
        pytest.param(b'{"model": "json, not a pickle"}', id="json"),
    ],
)
def test_unloadable_upload_is_400(client, data):
    """Bytes that are not a loadable pickle answer 400; nothing is stored."""
    assert_error(client.post(f"/api/model/regression/{MODEL}/", data=data), 400)
    assert_error(client.post("/api/model/regression/", data=data), 400)
    assert client.get("/api/models/").get_json() == {"models": []}


_WRONG_METHODS = [
    ("HEAD", "/api/learn/", {"POST"}),
    ("PUT", "/api/learn/", {"POST"}),
    ("PATCH", "/api/predict/", {"POST"}),
    ("HEAD", "/api/label/", {"POST"}),
    ("GET", "/api/label/", {"POST"}),
    ("PUT", "/api/", {"GET", "HEAD"}),
    ("PUT", "/api/models/", {"GET", "HEAD"}),
    ("POST", "/api/metrics/", {"GET", "HEAD"}),
    ("DELETE", "/api/stats/", {"GET", "HEAD"}),
    ("GET", "/api/model/", {"DELETE"}),
    ("PUT", "/api/model/", {"DELETE"}),
    ("PATCH", f"/api/model/{MODEL}/", {"GET", "HEAD", "POST", "DELETE"}),
    ("PUT", f"/api/model/{MODEL}/", {"GET", "HEAD", "POST", "DELETE"}),
    ("HEAD", f"/api/model/regression/{MODEL}/", {"POST"}),
    ("POST", f"/api/model/download/{MODEL}/", {"GET", "HEAD"}),
    ("PATCH", f"/api/model/download/{MODEL}", {"GET", "HEAD"}),
]


@pytest.mark.parametrize(("method", "url", "methods"), _WRONG_METHODS, ids=[f"{m} {u}" for m, u, _ in _WRONG_METHODS])
def test_wrong_method_is_405_json_with_allow(client, method, url, methods):
    """A method a route does not serve answers 405 JSON with an Allow header listing those it does."""
    served_model(client, SAMPLES[:1])
    response = client.open(url, method=method)
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert allowed(response) == methods
    if method != "HEAD":  # a HEAD response has no body
        assert_error(response, 405)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/nothing/"),
        ("GET", "/api/nothing"),
        ("POST", "/api/learn/more/"),
        ("GET", "/api/model/download/"),
        ("GET", f"/api/model/download/{MODEL}/extra/"),
        ("PUT", "/api/a/b/c/d"),
        ("DELETE", "/api/stream/"),
    ],
)
def test_unknown_path_under_the_prefix_is_404_json(client, method, url):
    """An unknown path under /api answers 404 JSON."""
    served_model(client, SAMPLES[:1])
    assert_error(client.open(url, method=method), 404)


def test_paths_outside_the_prefix_keep_flask_errors(make_app, backend_name):
    """Outside the prefix the host app is untouched: Flask's own HTML 404 and 405."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name)

    @app.get("/hello")
    def hello():
        return "hello"

    client = app.test_client()
    assert client.get("/hello").data == b"hello"
    for response, status in (
        (client.get("/nothing"), 404),
        (client.get("/apiary/"), 404),
        (client.post("/hello"), 405),
    ):
        assert response.status_code == status
        assert response.mimetype == "text/html"
        assert b"<!doctype html>" in response.data.lower()


def test_regression_ground_truth_not_a_number_is_400_and_model_unchanged(client):
    """A regression ground truth "abc" answers 400 on learn and label; the model does not change."""
    served_model(client, SAMPLES[:5])
    before = (predict(client, X).get_json()["prediction"], metrics(client), stats(client)["learn"]["n_calls"])
    for bad in ("abc", True, [1.0], {"y": 1.0}):
        assert_error(learn(client, X, bad), 400)
    identifier = predict(client, X).get_json()["identifier"]
    assert_error(label(client, "abc", identifier), 400)
    after = (predict(client, X).get_json()["prediction"], metrics(client), stats(client)["learn"]["n_calls"])
    assert after == before
    # The refused label left the prediction waiting for a usable one.
    assert label(client, Y, identifier).status_code == 200


def test_features_that_make_the_model_raise_are_400_and_the_server_keeps_serving(client):
    """Features the model raises on answer 400, and the model keeps serving afterwards."""
    served_model(client, SAMPLES[:5])
    bad = {**X, "ordinal_date": "not a number"}
    assert_error(learn(client, bad, Y), 400)
    assert_error(predict(client, bad), 400)
    assert learn(client, *SAMPLES[6]).status_code == 201
    response = predict(client, X)
    assert response.status_code == 201 and isinstance(response.get_json()["prediction"], float)
    assert client.get("/api/").status_code == 200


# --- 3. settings that shape the blueprint ------------------------------------------------------


def test_api_views_enabled_registers_only_those(client_with):
    """RIVER_ML_API_VIEWS_ENABLED registers only the named views; the others are 404 JSON."""
    client = client_with(RIVER_ML_API_VIEWS_ENABLED=["service_info", "models"])
    assert client.get("/api/").status_code == 200
    assert client.get("/api/models/").get_json() == {"models": []}
    assert_error(learn(client, X, Y), 404)
    assert_error(predict(client, X), 404)
    assert_error(upload(client, regressor()), 404)
    assert_error(client.get("/api/metrics/", json={"model": MODEL}), 404)
    assert_error(client.get(f"/api/model/download/{MODEL}/"), 404)


def test_url_prefix_moves_every_route(client_with):
    """RIVER_ML_URL_PREFIX="ml" moves every route under /ml/; /api/ is the host app's 404."""
    client = client_with(RIVER_ML_URL_PREFIX="ml")
    assert client.get("/ml/").get_json()["id"] == "flask_river_ml"
    assert client.get("/ml").status_code == 200
    assert upload(client, regressor(), prefix="/ml").status_code == 201
    assert upload(client, regressor(), name=None, prefix="/ml").status_code == 201
    assert learn(client, X, Y, prefix="/ml").status_code == 201
    identifier = predict(client, X, prefix="/ml").get_json()["identifier"]
    assert label(client, Y, identifier, prefix="/ml").status_code == 200
    assert client.get(f"/ml/model/{MODEL}/").status_code == 200
    assert client.get(f"/ml/model/download/{MODEL}/").status_code == 200
    assert MODEL in client.get("/ml/models/").get_json()["models"]
    assert client.get("/ml/metrics/", json={"model": MODEL}).status_code == 200
    assert client.get("/ml/stats/", json={"model": MODEL}).get_json()["learn"]["n_calls"] == 1
    assert_error(client.get("/ml/nothing/"), 404)
    for url in ("/api/", "/api/models/", f"/api/model/{MODEL}/"):
        response = client.get(url)
        assert response.status_code == 404 and response.mimetype == "text/html"
    assert client.delete("/ml/model/", data={"model": MODEL}).status_code == 200
    assert MODEL not in client.get("/ml/models/").get_json()["models"]


def test_endpoints_are_named_by_the_routes(client_with):
    """Each rule's endpoint is the name views.ROUTES gives it, whatever the views enabled: url_for
    builds every rule under the prefix, and a view left out leaves the others' names alone."""
    from flask import url_for

    from flask_river_ml.http.views import ROUTES

    app = client_with(RIVER_ML_URL_PREFIX="ml").application
    arguments = {"name": MODEL, "flavor": "regression"}
    with app.test_request_context():
        for route in ROUTES:
            path = url_for(
                f"river_ml.{route.endpoint}", **{k: v for k, v in arguments.items() if f"<{k}>" in route.rule}
            )
            assert path == "/ml" + route.rule.replace("<name>", MODEL).replace("<flavor>", "regression")
    app = client_with(RIVER_ML_API_VIEWS_ENABLED=["dashboard", "learn"]).application
    assert {rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint.startswith("river_ml.")} == {
        "river_ml.dashboard",
        "river_ml.dashboard_data",
        "river_ml.learn",
        "river_ml.not_found",
        "river_ml.static",
    }


# --- 4. malicious uploads ----------------------------------------------------------------------


_MALICIOUS = [
    # Globals the safe list refuses outright.
    pytest.param(lambda m: pickle.dumps(Reduce(os.system, touch_command(m))), False, id="os.system"),
    pytest.param(lambda m: dill.dumps(Reduce(os.system, touch_command(m))), False, id="os.system-dill"),
    pytest.param(lambda m: pickle.dumps(Reduce(subprocess.call, ["touch", str(m)])), False, id="subprocess.call"),
    pytest.param(lambda m: pickle.dumps(Reduce(subprocess.Popen, ["touch", str(m)])), True, id="subprocess.Popen"),
    pytest.param(lambda m: pickle.dumps(Reduce(eval, write_code(m))), False, id="builtins.eval"),
    pytest.param(lambda m: pickle.dumps(Reduce(exec, write_code(m))), False, id="builtins.exec"),
    pytest.param(lambda m: pickle.dumps(Reduce(open, str(m), "w")), False, id="builtins.open"),
    pytest.param(
        lambda m: pickle.dumps(Reduce(Reduce(getattr, Reduce(__import__, "os"), "system"), touch_command(m))),
        False,
        id="builtins.getattr",
    ),
    pytest.param(lambda m: dill.dumps(Reduce(lambda: open(m, "w").close())), False, id="dill-function-by-value"),
    # Reaching a forbidden global through an allowed module's attributes (dotted names).
    pytest.param(
        lambda m: global_call("river.checks.common", "pickle.loads", pickle.dumps(Reduce(os.system, touch_command(m)))),
        False,
        id="river-module-attribute-pickle.loads",
    ),
    pytest.param(
        lambda m: global_call("numpy.testing._private.extbuild", "subprocess.Popen", ["touch", str(m)]),
        True,
        id="numpy-module-attribute-subprocess.Popen",
    ),
    pytest.param(
        lambda m: global_call("river.compose.pipeline", "io.open", str(m), "w"),
        False,
        id="river-module-attribute-io.open",
    ),
    # A numpy class whose constructor creates files.
    pytest.param(lambda m: global_call("numpy", "memmap", str(m), "uint8", "w+", 0, (4,)), False, id="numpy.memmap"),
]


@pytest.mark.parametrize(("build", "spawns"), _MALICIOUS)
def test_malicious_upload_is_400_and_never_runs(memory_client, tmp_path, build, spawns):
    """A pickle that would run code or touch files answers 400, and its side effect never happens."""
    marker = tmp_path / "pwned"
    data = build(marker)
    body = assert_error(memory_client.post(f"/api/model/custom/{MODEL}/", data=data), 400)
    assert not appears(marker, 1.0 if spawns else 0.0), "the upload ran code on the server"
    # Refused by the unpickler, not loaded and then refused by the flavor check.
    assert "implement" not in body["message"], body
    assert memory_client.get("/api/models/").get_json() == {"models": []}


def test_malicious_payloads_do_run_when_unpickled_freely(tmp_path):
    """The payloads above are real: a plain unpickler runs them (guards the test's own vectors)."""
    for index, param in enumerate(_MALICIOUS):
        build, spawns = param.values
        if spawns:
            continue
        marker = tmp_path / f"ran-{index}"
        loaded = dill.loads(build(marker))
        if hasattr(loaded, "close"):
            loaded.close()
        del loaded
        assert marker.exists(), param.id


def test_dill_class_by_value_is_400_and_never_runs(memory_client, tmp_path):
    """A class serialized by value (defined here) is refused before its code can run."""
    marker = tmp_path / "pwned"

    class Sneaky:
        def learn_one(self, x, y=None):
            return None

        def predict_one(self, x):
            return 0

        def __setstate__(self, state):
            open(state["marker"], "w").close()
            self.__dict__.update(state)

    sneaky = Sneaky()
    sneaky.marker = str(marker)
    data = dill.dumps(sneaky)
    # The vector is real: a plain dill.loads runs __setstate__.
    dill.loads(data)
    assert marker.exists()
    marker.unlink()

    assert_error(memory_client.post(f"/api/model/custom/{MODEL}/", data=data), 400)
    assert not marker.exists()
    assert_error(memory_client.post("/api/model/custom/", data=dill.dumps(lambda x: x)), 400)
    assert memory_client.get("/api/models/").get_json() == {"models": []}


def test_river_stream_iter_csv_is_never_called(memory_client, tmp_path, monkeypatch):
    """A pickle that reads a file with river.stream.iter_csv is refused before the call."""
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    marker = tmp_path / "read"
    data = pickle.dumps(Reduce(list, Reduce(river.stream.iter_csv, str(secret))))
    # The vector is real: a plain unpickler reads the file.
    assert pickle.loads(data) == [({"password": "hunter2"}, None)]

    def spy(*args: Any, **kwargs: Any):
        marker.touch()
        return iter([])

    monkeypatch.setattr(importlib.import_module("river.stream.iter_csv"), "iter_csv", spy)
    body = assert_error(memory_client.post(f"/api/model/custom/{MODEL}/", data=data), 400)
    assert not marker.exists()
    assert "hunter2" not in body["message"]
    assert memory_client.get("/api/models/").get_json() == {"models": []}


def test_upload_calling_sys_exit_is_400(memory_client):
    """A pickle that reaches sys.exit through an allowed module answers 400; the server survives."""
    response = memory_client.post(f"/api/model/custom/{MODEL}/", data=global_call("river.base.base", "sys.exit", 3))
    assert_error(response, 400)
    assert memory_client.get("/api/").status_code == 200


def test_upload_naming_a_module_that_runs_at_import_is_400(memory_client, monkeypatch, capsys):
    """A pickle naming a module whose import runs a program (numpy.f2py.__main__) is refused unimported."""
    monkeypatch.setattr(sys, "argv", ["f2py", "-v"])  # what f2py would act on if it ran
    response = memory_client.post(f"/api/model/custom/{MODEL}/", data=global_call("numpy.f2py.__main__", "main"))
    assert_error(response, 400)
    assert capsys.readouterr().out == "", "importing the module ran f2py"
    assert memory_client.get("/api/").status_code == 200


# --- 5. no input gives a 500 -------------------------------------------------------------------


_ODD = [
    ("learn", {"model": MODEL, "features": {"ordinal_date": [[1, 2], [3]]}, "ground_truth": 1.0}),
    ("learn", {"model": MODEL, "features": {"ordinal_date": [[1, [2]]]}}),
    ("predict", {"model": MODEL, "features": {"ordinal_date": [[1, 2], [3]]}}),
    ("predict", {"model": MODEL, "features": {"ordinal_date": {"nested": {"deeper": [None]}}}}),
    ("learn", {"model": MODEL, "features": {"ordinal_date": 10**400}, "ground_truth": 10**400}),
    ("learn", {"model": MODEL, "features": {"ordinal_date": 1e308}, "ground_truth": -1e308}),
    ("predict", {"model": MODEL, "features": {"ordinal_date": 10**400}}),
    ("predict", {"model": MODEL, "features": X, "identifier": 10**400}),
    ("learn", {"model": MODEL, "features": X, "ground_truth": 1.0, "prediction": {"a": "b"}}),
    ("learn", {"model": MODEL, "features": X, "ground_truth": 1.0, "prediction": [1, 2]}),
    ("learn", {"model": None, "features": X, "ground_truth": 1.0}),
    ("predict", {"model": None, "features": X}),
    ("label", {"model": None, "identifier": "i", "label": 1.0}),
    ("learn", {"model": "modèle-ü", "features": X, "ground_truth": 1.0}),
    ("predict", {"model": "模型", "features": {"😀": 1.0, "\u0000": 2.0}}),
    ("label", {"model": "ünïcode", "identifier": "ïd", "label": 1.0}),
    ("predict", {"model": MODEL, "features": {"😀": 1.0, "\u0000": 2.0}}),
    ("learn", {"model": "x" * 10240, "features": X, "ground_truth": 1.0}),
    ("predict", {"model": "x" * 10240, "features": X}),
    ("label", {"model": "x" * 10240, "identifier": "i", "label": 1.0}),
    ("label", {"model": MODEL, "identifier": "é" * 10240, "label": 1.0}),
    ("label", {"model": MODEL, "identifier": "i", "label": [[1.0]]}),
    ("learn", {"model": MODEL, "identifier": "never-made", "ground_truth": {"y": [1]}}),
]


@pytest.mark.parametrize(("route", "payload"), _ODD, ids=[f"{route}-{i}" for i, (route, _) in enumerate(_ODD)])
def test_odd_payloads_never_give_a_500(client, route, payload):
    """Odd payloads answer a 4xx or a success, always JSON, never a 500; the model keeps serving."""
    served_model(client, SAMPLES[:3])
    predict(client, X, identifier="i")
    response = client.post(f"/api/{route}/", json=payload)
    assert response.status_code < 500, response.data[:500]
    assert response.mimetype == "application/json"
    assert strict_json(response) is not None
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    assert predict(client, X).status_code == 201


_DEEP = 100_000


@pytest.mark.parametrize(
    ("method", "route"),
    [("POST", "/api/learn/"), ("POST", "/api/predict/"), ("POST", "/api/label/"), ("GET", "/api/metrics/")],
)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"model": "served", "features": {"a": ' + "[" * _DEEP + "]" * _DEEP + "}}", id="deep-nesting"),
        pytest.param('{"model": "served", "features": {"a": 1e400}, "ground_truth": 1e400}', id="1e400"),
        pytest.param('{"model": "served", "features": {"a": 1' + "0" * 5000 + "}}", id="5000-digits"),
        pytest.param('{"model": "served", "model": "twice", "features": {}}', id="duplicate-key"),
        pytest.param(b'\xff\xfe{"model"', id="bad-utf8"),
    ],
)
def test_odd_raw_bodies_never_give_a_500(client, method, route, body):
    """Bodies the JSON parser chokes on (deep nesting, huge numbers, bad UTF-8) answer a JSON 4xx or success."""
    served_model(client, SAMPLES[:3])
    response = client.open(route, method=method, data=body, content_type="application/json")
    assert response.status_code < 500, response.data[:500]
    assert response.mimetype == "application/json"
    strict_json(response)
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    assert predict(client, X).status_code == 201


@pytest.mark.parametrize(
    "url",
    [
        "/api/model/regression/modèle-ü/",
        "/api/model/regression/" + "x" * 10240 + "/",
        "/api/model/regression/..%2F..%2Fetc/",
        "/api/model/" + "x" * 10240 + "/",
        "/api/model/download/%00/",
    ],
    ids=["upload-unicode", "upload-10kB", "upload-traversal", "get-10kB", "download-nul"],
)
def test_odd_names_in_paths_never_give_a_500(client, url):
    """Unicode, 10 kB and odd model names in a path answer a JSON 4xx."""
    method = "POST" if "/regression/" in url else "GET"
    response = client.open(url, method=method, data=dill.dumps(regressor()) if method == "POST" else None)
    assert 400 <= response.status_code < 500, response.data[:500]
    assert_error(response, response.status_code)
    assert client.get("/api/models/").get_json() == {"models": []}

"""What a request may carry: no NaN or Infinity in any JSON body, no deep nesting, over HTTP and
in process; a refused request changes nothing stored."""

from __future__ import annotations

import uuid

import dill
import pytest
from river import datasets, linear_model, preprocessing

from flask_river_ml import FlaskRiverML, InvalidInput
from flask_river_ml.payloads import MAX_DEPTH, _parse_exactly, _uuid4_text, new_identifier, new_identifiers, parse_json

MODEL = "served"
SAMPLES = list(datasets.TrumpApproval().take(5))
X, Y = SAMPLES[0]
_NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


@pytest.fixture
def client(app):
    """An app on each embedded backend with a regressor trained on SAMPLES, and a waiting prediction."""
    client = app.test_client()
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    assert client.post(f"/api/model/regression/{MODEL}/", data=dill.dumps(model)).status_code == 201
    for x, y in SAMPLES:
        assert client.post("/api/learn/", json={"model": MODEL, "features": x, "ground_truth": y}).status_code == 201
    waiting = {"model": MODEL, "features": X, "identifier": "waiting"}
    assert client.post("/api/predict/", json=waiting).status_code == 201
    return client


def _state(client) -> tuple:
    """What a refused request must leave as it was: the prediction, the metrics, the stats' counts."""
    prediction = client.post("/api/predict/", json={"model": MODEL, "features": X}).get_json()["prediction"]
    stats = client.get("/api/stats/", query_string={"model": MODEL}).get_json()
    metrics = client.get("/api/metrics/", query_string={"model": MODEL}).get_json()
    return prediction, metrics, stats["learn"]["n_calls"]


#: (method, route, raw body): ``@`` marks each place a number can go.
_BODIES = [
    ("POST", "/api/learn/", '{"model": "served", "features": {"ordinal_date": @}, "ground_truth": 1.0}'),
    ("POST", "/api/learn/", '{"model": "served", "features": {"ordinal_date": 1.0}, "ground_truth": @}'),
    ("POST", "/api/learn/", '{"model": "served", "features": {"a": 1.0}, "ground_truth": 1, "prediction": @}'),
    ("POST", "/api/learn/", '{"model": "served", "identifier": "waiting", "ground_truth": @}'),
    ("POST", "/api/predict/", '{"model": "served", "features": {"ordinal_date": @}}'),
    ("POST", "/api/predict/", '{"model": "served", "features": {"a": [1, {"b": @}]}}'),
    ("POST", "/api/label/", '{"model": "served", "identifier": "waiting", "label": @}'),
    ("GET", "/api/metrics/", '{"model": "served", "x": @}'),
    ("POST", "/api/model/regression/other/", '{"class": "river.linear_model.LinearRegression", "l2": @}'),
]


@pytest.mark.parametrize("constant", _NON_FINITE)
def test_non_finite_numbers_are_refused_everywhere(client, constant):
    """NaN, Infinity, -Infinity and numbers too large for a float answer 400 saying so; nothing changes."""
    before = _state(client)
    for method, route, body in _BODIES:
        body = body.replace("@", constant)
        response = client.open(route, method=method, data=body, content_type="application/json")
        assert response.status_code == 400, (route, body, response.data[:300])
        message = response.get_json()["message"]
        assert "not valid JSON" in message and ("not a JSON number" in message or "out of range" in message), message
    assert _state(client) == before
    assert client.get("/api/models/").get_json() == {"models": [MODEL]}
    # The waiting prediction is still there for a good label.
    assert client.post("/api/label/", json={"model": MODEL, "identifier": "waiting", "label": Y}).status_code == 200


def _nested(depth: int) -> dict:
    value: object = 1.0
    for _ in range(depth - 1):
        value = {"a": value}
    return value  # type: ignore[return-value]


@pytest.mark.parametrize("depth", [MAX_DEPTH, 900, 100_000])
def test_features_nested_deeper_than_the_bound_are_refused(client, depth):
    """Features nested 900 or 100,000 deep answer 400 naming the bound; nothing changes."""
    before = _state(client)
    # Built as text: json.dumps itself cannot nest 100,000 deep.
    features = '{"a": ' * depth + "1.0" + "}" * depth
    bodies = {
        "/api/learn/": '{"model": "served", "ground_truth": 1.0, "features": @}',
        "/api/predict/": '{"model": "served", "features": @}',
    }
    for route, body in bodies.items():
        response = client.post(route, data=body.replace("@", features), content_type="application/json")
        assert response.status_code == 400, response.data[:300]
        assert f"deeper than {MAX_DEPTH}" in response.get_json()["message"]
    assert _state(client) == before


def test_nesting_within_the_bound_reaches_the_model(client):
    """A payload exactly at the bound passes the parser: the model itself answers (it cannot use a dict)."""
    features = _nested(MAX_DEPTH - 1)
    response = client.post("/api/predict/", json={"model": MODEL, "features": {"ordinal_date": features}})
    assert response.status_code in (200, 201, 400), response.data[:300]
    assert f"deeper than {MAX_DEPTH}" not in (response.get_json() or {}).get("message", "")


def test_deep_features_in_process_are_refused(app):
    """In process, features nested deeper than the bound raise InvalidInput before anything is written."""
    river_ml = FlaskRiverML()
    name = river_ml.add_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression")
    deep = {"a": _nested(MAX_DEPTH + 5)}
    with pytest.raises(InvalidInput, match=f"deeper than {MAX_DEPTH}"):
        river_ml.learn(name, ground_truth=1.0, features=deep)
    with pytest.raises(InvalidInput, match=f"deeper than {MAX_DEPTH}"):
        river_ml.predict(deep, name)
    assert river_ml.stats(name)["learn"]["n_calls"] == 0


def test_a_json_array_upload_is_400(client):
    """A body that is JSON but not an object is neither a description nor a pickle: 400."""
    response = client.post("/api/model/regression/other/", data="[1, 2]")
    assert response.status_code == 400
    assert "JSON object" in response.get_json()["message"]
    assert client.get("/api/models/").get_json() == {"models": [MODEL]}


@pytest.mark.parametrize("integer", ["1" + "0" * 400, "-" + "9" * 310])
def test_integers_too_large_for_a_float_are_refused_everywhere(client, integer):
    """A JSON integer is exact however long; one beyond a float's range overflows inside the
    model half-way through a learn. Refused with 400 before anything is written."""
    before = _state(client)
    for method, route, body in _BODIES:
        body = body.replace("@", integer)
        response = client.open(route, method=method, data=body, content_type="application/json")
        assert response.status_code == 400, (route, body, response.data[:300])
        assert "too large for a float" in response.get_json()["message"]
    assert _state(client) == before
    assert client.post("/api/label/", json={"model": MODEL, "identifier": "waiting", "label": Y}).status_code == 200


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -float("inf"), 10**400], ids=["nan", "inf", "-inf", "10**400"]
)
def test_non_finite_values_in_process_are_refused(app, bad):
    """In process, a NaN or an infinity in features, ground truth, prediction or label raises
    InvalidInput before anything is written, as the JSON parser refuses them over HTTP."""
    river_ml = FlaskRiverML()
    name = river_ml.add_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression")
    river_ml.learn(name, ground_truth=Y, features=X)
    identifier = river_ml.predict(X, name)["identifier"]
    calls = [
        lambda: river_ml.learn(name, ground_truth=1.0, features={"ordinal_date": bad}),
        lambda: river_ml.learn(name, ground_truth=1.0, features={"a": [1.0, {"b": bad}]}),
        lambda: river_ml.learn(name, ground_truth=bad, features=X),
        lambda: river_ml.learn(name, ground_truth=1.0, prediction=bad, features=X),
        lambda: river_ml.learn(name, ground_truth=bad, identifier=identifier),
        lambda: river_ml.predict({"ordinal_date": bad}, name),
        lambda: river_ml.label(bad, identifier, name),
    ]
    for call in calls:
        with pytest.raises(InvalidInput, match="finite|too large for a float"):
            call()
    assert river_ml.stats(name)["learn"]["n_calls"] == 1
    assert river_ml.label(Y, identifier, name) == "Successful label."


def test_json_bodies_over_their_limit_are_413_while_pickles_have_their_own(make_app, backend_name):
    """RIVER_ML_JSON_MAX_BYTES bounds every JSON body, a model's description included; a pickle
    upload is bounded by RIVER_ML_UPLOAD_MAX_BYTES alone."""
    client = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_JSON_MAX_BYTES=200).test_client()
    pickled = dill.dumps(preprocessing.StandardScaler() | linear_model.LinearRegression())
    assert len(pickled) > 200
    assert client.post(f"/api/model/regression/{MODEL}/", data=pickled).status_code == 201
    padding = "x" * 200
    for route, body in [
        ("/api/learn/", {"model": MODEL, "features": {"ordinal_date": 1.0, padding: 1.0}, "ground_truth": 1.0}),
        ("/api/predict/", {"model": MODEL, "features": {"ordinal_date": 1.0, padding: 1.0}}),
        ("/api/model/regression/other/", {"class": "river.linear_model.LinearRegression", "note": padding}),
    ]:
        response = client.post(route, json=body)
        assert response.status_code == 413, (route, response.data[:300])
        assert response.mimetype == "application/json" and response.get_json()["message"]
    assert client.get("/api/stats/", query_string={"model": MODEL}).get_json()["learn"]["n_calls"] == 0
    assert client.get("/api/models/").get_json() == {"models": [MODEL]}
    small = {"model": MODEL, "features": {"ordinal_date": 1.0}, "ground_truth": 1.0}
    assert client.post("/api/learn/", json=small).status_code == 201


def test_samples_with_more_features_than_the_bound_are_refused(make_app, backend_name):
    """RIVER_ML_MAX_FEATURES bounds the features of one sample (checked by the service, which
    in-process calls share): a BayesianLinearRegression keeps a matrix of the square of its features, so 12 000 features
    in a 170 KB body took 3.4 GB. The bound answers 400 and changes nothing."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_MAX_FEATURES=50)
    client = app.test_client()
    name = "wide"
    assert (
        client.post(
            f"/api/model/regression/{name}/", json={"class": "river.linear_model.BayesianLinearRegression"}
        ).status_code
        == 201
    )
    wide = {f"f{i}": 1.0 for i in range(51)}
    for route, body in [
        ("/api/learn/", {"model": name, "features": wide, "ground_truth": 1.0}),
        ("/api/predict/", {"model": name, "features": wide}),
    ]:
        response = client.post(route, json=body)
        assert response.status_code == 400
        assert "RIVER_ML_MAX_FEATURES" in response.get_json()["message"]
    narrow = {f"f{i}": 1.0 for i in range(50)}
    assert client.post("/api/learn/", json={"model": name, "features": narrow, "ground_truth": 1.0}).status_code == 201
    assert client.get(f"/api/stats/?model={name}").get_json()["learn"]["n_calls"] == 1


def _nested_text(depth: int, inner: str = "1.5") -> bytes:
    return ('{"a": ' * (depth - 1) + inner + "}" * (depth - 1)).encode()


#: Bodies where a fast parser could read otherwise than the standard one: integers beyond 64
#: bits, floats about as large, encodings and escapes it may refuse, nesting at the bound.
_TRICKY_BODIES = [
    b'{"model": "m", "features": {"x": 1.5, "y": -0.0, "z": 3}, "ground_truth": true}',
    b'{"a": 18446744073709551616}',
    b'{"a": 18446744073709551615}',
    b'{"a": -9223372036854775809}',
    b"[9223372036854775808, -9223372036854775808, 1e19, -1e19, 9.3e18, 1e308, 5e-324]",
    b'{"identifier": 123456789012345678901234567890}',
    b'"\\ud800"',
    b'"\\u00e9\\n\\"\xc3\xa9"',
    b'\xef\xbb\xbf{"a": 1}',
    '{"a": [1, "é"]}'.encode("utf-16"),
    b'{"a": 1, "a": 2}',
    b'"x"',
    b"-0",
    b"1.0000000000000001",
    b"[]",
    b"",
    b"{",
    b'{"a": NaN}',
    b'{"a": 1e999}',
    b"[" * 2000 + b"]" * 2000,
    _nested_text(MAX_DEPTH),
    _nested_text(MAX_DEPTH + 1),
    _nested_text(MAX_DEPTH, "[]"),
    _nested_text(MAX_DEPTH - 1, "[[]]"),
]


def _read(parse, data: bytes) -> tuple:
    try:
        return "read", repr(parse(data))
    except InvalidInput as error:
        return "refused", error.message


@pytest.mark.parametrize("data", _TRICKY_BODIES)
def test_a_body_reads_the_same_whichever_parser_reads_it(data):
    """A body reads as the standard library reads it, value by value and type by type, and
    is refused with its message, wherever orjson would read it otherwise."""
    assert _read(parse_json, data) == _read(_parse_exactly, data)


def test_identifiers_are_version_4_uuids_as_the_uuid_module_writes_them():
    """Whatever random digits they are made of, the identifiers a predict generates read as
    ``str(uuid.UUID(bytes=..., version=4))`` writes the same random bytes; a batch's, made from
    one read of the random source, are as many distinct ones."""
    for byte in range(256):
        raw = bytes([byte]) * 16
        assert _uuid4_text(raw.hex()) == str(uuid.UUID(bytes=raw, version=4))
    batch = new_identifiers(1000)
    assert len(set(batch)) == 1000 and new_identifiers(0) == []
    for identifier in [new_identifier(), *batch]:
        parsed = uuid.UUID(identifier)
        assert str(parsed) == identifier and parsed.version == 4 and parsed.variant == uuid.RFC_4122

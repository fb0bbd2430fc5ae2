"""Authentication through Flask's test client, the CLI runner and in-process calls.

Sections: the challenge of every protected view; riverapi's token flow by hand; every way a
credential can be wrong; the secret that signs access tokens; a host app's own credentials
check; the in-process user calls; the ``flask river-ml`` commands.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dill
import pytest
from flask import Flask
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from river import datasets, linear_model, preprocessing
from riverapi.auth import parse_auth_header

from flask_river_ml import ConfigurationError, FlaskRiverML, RiverMLError, layout
from flask_river_ml.auth import Unauthorized, UserExists

MODEL = "served"
X, Y = next(iter(datasets.TrumpApproval().take(1)))
PASSWORD = "correct horse battery staple"
REALM = "http://localhost/api/auth/token/"
SERVICE = "http://localhost"


# --- helpers -----------------------------------------------------------------------------------


def regressor():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def basic(user: str, token: str) -> dict[str, str]:
    """The header riverapi sends to the realm: Basic base64(user:token)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_user(app: Flask, name: str = "alice", password: str = PASSWORD) -> str:
    """Create a user in-process; their API token."""
    with app.app_context():
        return FlaskRiverML().create_user(name, password)


def grant(client, user: str, api_token: str, **kwargs: Any) -> dict[str, Any]:
    """Exchange user:api_token at the realm as riverapi does; the JSON grant."""
    response = client.get("/api/auth/token/", headers={**basic(user, api_token), "service": SERVICE}, **kwargs)
    assert response.status_code == 200, response.data[:500]
    assert response.mimetype == "application/json"
    return response.get_json()


def access_token(client, user: str, api_token: str) -> str:
    token = grant(client, user, api_token)["token"]
    assert isinstance(token, str) and token
    return token


def assert_unauthorized(response) -> str:
    """A 401 with a JSON body holding a message; the message."""
    assert response.status_code == 401, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json", response.data[:500]
    body = response.get_json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body
    return body["message"]


def assert_challenge(response, realm: str = REALM, service: str = SERVICE) -> None:
    """A JSON 401 whose WWW-Authenticate header, read by riverapi's own parser, names realm and service."""
    assert_unauthorized(response)
    header = response.headers.get("WWW-Authenticate")
    assert header is not None and header.startswith("Bearer "), header
    assert header == f'Bearer realm="{realm}",service="{service}"'
    parsed = parse_auth_header(header)
    assert parsed.Realm == realm
    assert parsed.Service == service


def protected_requests(name: str = MODEL) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(view, method, path, test-client keywords) of every protected route, as riverapi calls them."""
    return [
        ("learn", "POST", "/api/learn/", {"json": {"model": name, "features": X, "ground_truth": Y}}),
        ("predict", "POST", "/api/predict/", {"json": {"model": name, "features": X}}),
        ("label", "POST", "/api/label/", {"json": {"model": name, "identifier": "some-id", "label": Y}}),
        ("learn_batch", "POST", "/api/learn/batch/", {"json": {"model": name, "samples": [[X, Y]]}}),
        ("predict_batch", "POST", "/api/predict/batch/", {"json": {"model": name, "samples": [{"features": X}]}}),
        ("model", "GET", f"/api/model/{name}/", {}),
        ("model", "POST", "/api/model/regression/other/", {"data": dill.dumps(regressor())}),
        ("model", "POST", "/api/model/regression/", {"data": dill.dumps(regressor())}),
        ("model", "DELETE", f"/api/model/{name}/", {}),
        ("model", "DELETE", "/api/model/", {"json": {"model": name}}),
        ("models", "GET", "/api/models/", {}),
        ("model_download", "GET", f"/api/model/download/{name}/", {}),
        ("metrics", "GET", "/api/metrics/", {"json": {"model": name}}),
        ("stats", "GET", "/api/stats/", {"query_string": {"model": name}}),
    ]


PROTECTED = [pytest.param(*request, id=f"{request[0]}-{request[1]}-{request[2]}") for request in protected_requests()]


def call(client, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any):
    return client.open(path, method=method, headers=headers or {}, **kwargs)


@pytest.fixture
def auth_app(make_app) -> Flask:
    """An app on the memory backend with authentication on and the model MODEL stored."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    with app.app_context():
        FlaskRiverML().add_model(regressor(), "regression", name=MODEL)
    return app


@pytest.fixture
def user_app(make_app, backend_name) -> Flask:
    """An app with authentication on, once per embedded backend."""
    return make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_DISABLE_AUTHENTICATION=False)


@pytest.fixture
def host_app(tmp_path) -> Iterator[tuple[Flask, FlaskRiverML]]:
    """An app built the init_app way, with its extension object at hand."""
    river_ml = FlaskRiverML()
    app = Flask("host_app", instance_path=str(tmp_path / "host"))
    app.config.update(TESTING=True, RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    river_ml.init_app(app)
    yield app, river_ml
    FlaskRiverML.state(app).close()


# --- the challenge -----------------------------------------------------------------------------


@pytest.mark.parametrize(("view", "method", "path", "kwargs"), PROTECTED)
def test_protected_view_without_token_is_challenged(auth_app, view, method, path, kwargs):
    """Each protected route without a token: 401 JSON and the Bearer challenge riverapi parses; nothing changes."""
    client = auth_app.test_client()
    assert_challenge(call(client, method, path, **kwargs))
    with auth_app.app_context():
        river_ml = FlaskRiverML()
        assert river_ml.models() == [MODEL]
        assert river_ml.stats(MODEL)["learn"]["n_calls"] == 0
        assert river_ml.stats(MODEL)["predict"]["n_calls"] == 0


@pytest.mark.parametrize(("view", "method", "path", "kwargs"), PROTECTED)
def test_protected_view_without_slash_is_challenged_too(auth_app, view, method, path, kwargs):
    """The same routes without their final slash are protected as well (no redirect around the check)."""
    assert_challenge(call(auth_app.test_client(), method, path.rstrip("/"), **kwargs))


def test_default_authenticated_views_are_every_view_but_the_open_two(make_app):
    """RIVER_ML_AUTHENTICATED_VIEWS defaults to every view but service_info and auth_token."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    assert set(app.config["RIVER_ML_AUTHENTICATED_VIEWS"]) == {
        "learn",
        "predict",
        "label",
        "learn_batch",
        "predict_batch",
        "model",
        "models",
        "model_download",
        "metrics",
        "stats",
        "stream_metrics",
        "stream_events",
        "dashboard",
    }


def test_service_info_and_token_endpoint_are_open(auth_app):
    """service_info answers without any token; the token endpoint needs Basic credentials, no access token."""
    client = auth_app.test_client()
    response = client.get("/api/")
    assert response.status_code == 200
    assert response.get_json()["status"] == "running"
    api_token = new_user(auth_app)
    assert grant(client, "alice", api_token)["token"]


def test_challenge_follows_the_request_host(make_app):
    """Without RIVER_ML_DOMAIN_URL, realm and service are built from the URL the client used."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    client = app.test_client()
    response = client.get("/api/models/", base_url="https://ml.internal:8443")
    assert_challenge(response, "https://ml.internal:8443/api/auth/token/", "https://ml.internal:8443")


def test_challenge_follows_the_url_prefix(make_app):
    """The realm is the token endpoint under the configured prefix."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_URL_PREFIX="river"
    )
    assert_challenge(app.test_client().get("/river/models/"), "http://localhost/river/auth/token/", SERVICE)


@pytest.mark.parametrize("domain", ["https://ml.example.org", "https://ml.example.org/"])
def test_challenge_uses_domain_url_not_the_host_header(make_app, domain):
    """With RIVER_ML_DOMAIN_URL, realm and service use it, whatever Host the request carries."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_DOMAIN_URL=domain)
    client = app.test_client()
    for response in (
        client.get("/api/models/", base_url="http://evil.example.com:8000"),
        client.get("/api/models/", headers={"Host": "attacker.test"}),
    ):
        assert_challenge(response, "https://ml.example.org/api/auth/token/", "https://ml.example.org")


def test_custom_authenticated_views_protect_exactly_those(make_app):
    """A custom RIVER_ML_AUTHENTICATED_VIEWS protects the views it names and no other."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_DISABLE_AUTHENTICATION=False,
        RIVER_ML_AUTHENTICATED_VIEWS=["models", "service_info"],
    )
    client = app.test_client()
    assert_challenge(client.get("/api/"))
    assert_challenge(client.get("/api/models/"))
    # Every other view answers without a token (here: the model does not exist).
    assert client.post("/api/model/regression/free/", data=dill.dumps(regressor())).status_code == 201
    assert client.get("/api/model/free/").status_code == 200
    assert client.post("/api/learn/", json={"model": "free", "features": X, "ground_truth": Y}).status_code == 201
    assert client.post("/api/predict/", json={"model": "free", "features": X}).status_code == 201
    assert client.get("/api/metrics/", json={"model": "free"}).status_code == 200
    assert client.get("/api/stats/", json={"model": "free"}).status_code == 200
    assert client.get("/api/model/download/free/").status_code == 200
    assert client.delete("/api/model/free/").status_code == 200


def test_empty_authenticated_views_protect_nothing(make_app):
    """RIVER_ML_AUTHENTICATED_VIEWS = [] with authentication on leaves every view open."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_AUTHENTICATED_VIEWS=[]
    )
    assert app.test_client().get("/api/models/").status_code == 200


def test_authentication_is_off_by_default(make_app):
    """RIVER_ML_DISABLE_AUTHENTICATION defaults to True: no challenge, and a stray Bearer token is ignored."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    client = app.test_client()
    response = client.get("/api/models/")
    assert response.status_code == 200
    assert "WWW-Authenticate" not in response.headers
    assert client.get("/api/models/", headers=bearer("garbage")).status_code == 200


# --- riverapi's flow by hand -------------------------------------------------------------------


def test_token_endpoint_grant(user_app):
    """Basic user:api_token at the realm gives 200 {token, expires_in, issued_at}."""
    api_token = new_user(user_app)
    client = user_app.test_client()
    challenge = client.get("/api/models/")
    realm = parse_auth_header(challenge.headers["WWW-Authenticate"]).Realm
    body = grant(client, "alice", api_token, base_url=realm.split("/api/")[0])
    assert set(body) == {"token", "expires_in", "issued_at"}
    assert isinstance(body["token"], str) and body["token"]
    assert body["expires_in"] == 600
    issued = datetime.fromisoformat(body["issued_at"])
    assert issued.tzinfo is not None
    assert abs(datetime.now(UTC) - issued) < timedelta(seconds=30)


def test_bearer_token_opens_every_protected_view(user_app):
    """The retry with Bearer succeeds on every protected view: a model uploaded with a token is served fully."""
    api_token = new_user(user_app)
    client = user_app.test_client()
    assert_challenge(client.post(f"/api/model/regression/{MODEL}/", data=dill.dumps(regressor())))
    auth = bearer(access_token(client, "alice", api_token))

    response = client.post(f"/api/model/regression/{MODEL}/", data=dill.dumps(regressor()), headers=auth)
    assert response.status_code == 201, response.get_json()
    assert response.get_json() == {"name": MODEL}
    generated = client.post("/api/model/regression/", data=dill.dumps(regressor()), headers=auth)
    assert generated.status_code == 201, generated.get_json()
    assert client.get("/api/models/", headers=auth).get_json() == {
        "models": sorted([MODEL, generated.get_json()["name"]])
    }
    assert client.get(f"/api/model/{MODEL}/", headers=auth).status_code == 200
    learned = client.post("/api/learn/", json={"model": MODEL, "features": X, "ground_truth": Y}, headers=auth)
    assert learned.status_code == 201, learned.get_json()
    predicted = client.post("/api/predict/", json={"model": MODEL, "features": X}, headers=auth)
    assert predicted.status_code == 201, predicted.get_json()
    identifier = predicted.get_json()["identifier"]
    labelled = client.post("/api/label/", json={"model": MODEL, "identifier": identifier, "label": Y}, headers=auth)
    assert labelled.status_code == 200, labelled.get_json()
    metrics = client.get("/api/metrics/", json={"model": MODEL}, headers=auth)
    assert metrics.status_code == 200 and "MAE" in metrics.get_json()
    stats = client.get("/api/stats/", json={"model": MODEL}, headers=auth)
    assert stats.status_code == 200
    assert stats.get_json()["learn"]["n_calls"] == 1  # label is not timed
    assert stats.get_json()["predict"]["n_calls"] == 1
    download = client.get(f"/api/model/download/{MODEL}/", headers=auth)
    assert download.status_code == 200 and download.mimetype == "application/octet-stream"
    assert client.delete(f"/api/model/{MODEL}/", headers=auth).status_code == 200
    deleted = client.delete("/api/model/", json={"model": generated.get_json()["name"]}, headers=auth)
    assert deleted.status_code == 200
    assert client.get("/api/models/", headers=auth).get_json() == {"models": []}


@pytest.mark.parametrize(("view", "method", "path", "kwargs"), PROTECTED)
def test_bearer_token_is_never_challenged(auth_app, view, method, path, kwargs):
    """With a valid access token no protected route answers 401: the request reaches the view."""
    client = auth_app.test_client()
    auth = bearer(access_token(client, "alice", new_user(auth_app)))
    response = call(client, method, path, headers=auth, **kwargs)
    assert response.status_code != 401, response.get_json()
    assert response.status_code < 500, response.data[:500]


def test_access_token_names_the_user(auth_app):
    """Two users get different access tokens, each usable on its own."""
    client = auth_app.test_client()
    alice = access_token(client, "alice", new_user(auth_app, "alice"))
    bob = access_token(client, "bob", new_user(auth_app, "bob"))
    assert alice != bob
    assert client.get("/api/models/", headers=bearer(alice)).status_code == 200
    assert client.get("/api/models/", headers=bearer(bob)).status_code == 200


# --- wrong credentials -------------------------------------------------------------------------


def test_wrong_api_token_is_refused(auth_app):
    """A wrong API token, or the password in its place, at the token endpoint: 401 JSON."""
    new_user(auth_app)
    client = auth_app.test_client()
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", "not-the-token")))
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", PASSWORD)))


def test_unknown_user_is_refused(auth_app):
    """An unknown user, even with another user's token: 401 JSON."""
    api_token = new_user(auth_app)
    client = auth_app.test_client()
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("mallory", api_token)))
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("Alice", api_token)))


MALFORMED = {
    "not-base64": "Basic !!!not-base64***",
    "no-colon": "Basic " + base64.b64encode(b"alicetoken").decode(),
    "empty-basic": "Basic ",
    "bare-basic": "Basic",
    "empty-header": "",
    "empty-user": "Basic " + base64.b64encode(b":token").decode(),
    "empty-token": "Basic " + base64.b64encode(b"alice:").decode(),
    "not-utf8": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    "padding-only": "Basic =",
    "bearer": "Bearer x",
    "digest": 'Digest username="alice", realm="r", nonce="n", uri="/api/auth/token/", response="6629fae4"',
    "unknown-scheme": "Token abc",
}


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_basic_header_is_401_not_500(auth_app, header):
    """A malformed Authorization header at the token endpoint: 401 JSON, never a 500."""
    new_user(auth_app)
    assert_unauthorized(auth_app.test_client().get("/api/auth/token/", headers={"Authorization": header}))


def test_token_endpoint_without_credentials(auth_app):
    """No Authorization header at all at the token endpoint: 401 JSON."""
    assert_unauthorized(auth_app.test_client().get("/api/auth/token/"))


def test_token_endpoint_refusals_carry_the_challenge(auth_app):
    """Every 401 of the token endpoint names the realm again: no credentials, malformed ones, a
    wrong token and an unknown user alike."""
    api_token = new_user(auth_app)
    client = auth_app.test_client()
    assert_challenge(client.get("/api/auth/token/"))
    assert_challenge(client.get("/api/auth/token/", headers={"Authorization": MALFORMED["no-colon"]}))
    assert_challenge(client.get("/api/auth/token/", headers=basic("alice", "not-the-token")))
    assert_challenge(client.get("/api/auth/token/", headers=basic("mallory", api_token)))


@pytest.mark.parametrize(
    "header",
    ["Bearer garbage", "Bearer ", "Bearer a.b.c", "Bearer " + "x" * 5000, "Token abc", "Basic abc"],
    ids=["garbage", "empty", "dotted", "huge", "other-scheme", "basic"],
)
def test_garbage_bearer_token_is_challenged(auth_app, header):
    """A Bearer value that is not an access token, or another scheme, on a protected view: 401 and the challenge."""
    assert_challenge(auth_app.test_client().get("/api/models/", headers={"Authorization": header}))


def test_api_token_is_not_an_access_token(auth_app):
    """The long-lived API token itself, sent as Bearer, is refused: it must be exchanged first."""
    api_token = new_user(auth_app)
    assert_challenge(auth_app.test_client().get("/api/models/", headers=bearer(api_token)))


@pytest.fixture
def clock(monkeypatch) -> dict[str, int]:
    """Shift itsdangerous' clock: ``clock["offset"] = seconds``."""
    state = {"offset": 0}
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) + state["offset"])
    return state


def test_access_token_expires_after_the_default_lifetime(auth_app, clock):
    """An access token works until TOKEN_EXPIRES_SECONDS (600 by default) and is refused after."""
    client = auth_app.test_client()
    token = access_token(client, "alice", new_user(auth_app))
    clock["offset"] = 595
    assert client.get("/api/models/", headers=bearer(token)).status_code == 200
    clock["offset"] = 605
    assert_challenge(client.get("/api/models/", headers=bearer(token)))


def test_access_token_expires_after_the_configured_lifetime(make_app, clock):
    """RIVER_ML_TOKEN_EXPIRES_SECONDS sets both expires_in and the real lifetime."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_TOKEN_EXPIRES_SECONDS=30
    )
    client = app.test_client()
    body = grant(client, "alice", new_user(app))
    assert body["expires_in"] == 30
    clock["offset"] = 25
    assert client.get("/api/models/", headers=bearer(body["token"])).status_code == 200
    clock["offset"] = 35
    assert_challenge(client.get("/api/models/", headers=bearer(body["token"])))
    clock["offset"] = 0
    fresh = access_token(client, "bob", new_user(app, "bob"))
    assert client.get("/api/models/", headers=bearer(fresh)).status_code == 200


def test_access_token_expires_in_real_time(make_app):
    """With RIVER_ML_TOKEN_EXPIRES_SECONDS=1, a token is refused two seconds later, on the real clock."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_TOKEN_EXPIRES_SECONDS=1
    )
    client = app.test_client()
    token = access_token(client, "alice", new_user(app))
    assert client.get("/api/models/", headers=bearer(token)).status_code == 200
    time.sleep(2.1)
    assert_challenge(client.get("/api/models/", headers=bearer(token)))


def test_forged_token_signed_with_another_key_is_refused(auth_app):
    """The very payload of a real token, signed with another key, is refused."""
    client = auth_app.test_client()
    token = access_token(client, "alice", new_user(auth_app))
    valid, payload = URLSafeTimedSerializer("whatever").loads_unsafe(token, salt="flask-river-ml access token")
    assert not valid and payload is not None
    for secret in ("another key", "", "secret"):
        for salt in ("flask-river-ml access token", "itsdangerous"):
            forged = URLSafeTimedSerializer(secret, salt=salt).dumps(payload)
            assert_challenge(client.get("/api/models/", headers=bearer(forged)))


def test_tampered_token_is_refused(auth_app):
    """A token whose payload or signature was changed is refused: swapping users does not work."""
    client = auth_app.test_client()
    alice = access_token(client, "alice", new_user(auth_app, "alice"))
    bob = access_token(client, "bob", new_user(auth_app, "bob"))
    alice_payload, alice_rest = alice.split(".", 1)
    bob_payload, bob_rest = bob.split(".", 1)
    # The signature's first character carries six whole bits; its last may carry only padding
    # bits that base64 decoding ignores, so changing that one would not always change the token.
    signed, signature = alice.rsplit(".", 1)
    flipped = signed + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    for tampered in (bob_payload + "." + alice_rest, alice_payload + "." + bob_rest, flipped, alice + "x"):
        assert tampered not in (alice, bob)
        assert_challenge(client.get("/api/models/", headers=bearer(tampered)))
    assert client.get("/api/models/", headers=bearer(alice)).status_code == 200


def test_token_of_a_deleted_user_is_refused(auth_app):
    """Deleting a user revokes their API token and access tokens, also when the name is taken again."""
    client = auth_app.test_client()
    api_token = new_user(auth_app)
    token = access_token(client, "alice", api_token)
    with auth_app.app_context():
        assert FlaskRiverML().delete_user("alice") is True
    assert_challenge(client.get("/api/models/", headers=bearer(token)))
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", api_token)))
    new_token = new_user(auth_app)
    assert_challenge(client.get("/api/models/", headers=bearer(token)))
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", api_token)))
    assert client.get("/api/models/", headers=bearer(access_token(client, "alice", new_token))).status_code == 200


def test_get_token_revokes_the_old_tokens(user_app):
    """After get_token the old API token and old access tokens are refused; the new API token works."""
    client = user_app.test_client()
    old_api_token = new_user(user_app)
    old_access = access_token(client, "alice", old_api_token)
    assert client.get("/api/models/", headers=bearer(old_access)).status_code == 200
    with user_app.app_context():
        new_api_token = FlaskRiverML().get_token("alice", PASSWORD)
    assert new_api_token != old_api_token
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", old_api_token)))
    assert_challenge(client.get("/api/models/", headers=bearer(old_access)))
    new_access = access_token(client, "alice", new_api_token)
    assert client.get("/api/models/", headers=bearer(new_access)).status_code == 200


def test_query_token_is_not_accepted_outside_streams(auth_app):
    """?token= is for the stream views only: on /api/models/ and /api/learn/ a valid token in the query is refused."""
    client = auth_app.test_client()
    token = access_token(client, "alice", new_user(auth_app))
    assert_challenge(client.get("/api/models/", query_string={"token": token}))
    assert_challenge(
        client.post(
            "/api/learn/", query_string={"token": token}, json={"model": MODEL, "features": X, "ground_truth": Y}
        )
    )
    assert client.get("/api/models/", headers=bearer(token)).status_code == 200


# --- the secret that signs access tokens -------------------------------------------------------


def shared_app(make_app, instance: Path, **config: Any) -> Flask:
    """An app with authentication on, on the shelve store of ``instance`` (shared like two processes),
    with one blob key for every app (hosts sharing a store must share it)."""
    return make_app(
        instance_path=instance,
        RIVER_ML_STORAGE_BACKEND="shelve",
        RIVER_ML_DISABLE_AUTHENTICATION=False,
        RIVER_ML_SHELVE_PATH=str(instance.parent / "shared.shelve"),
        **{"RIVER_ML_SHELVE_SECRET_KEY": "one blob key for every app", **config},
    )


def accepts(app: Flask, token: str) -> bool:
    response = app.test_client().get("/api/models/", headers=bearer(token))
    if response.status_code == 401:
        assert_challenge(response)
        return False
    assert response.status_code == 200, response.data[:500]
    return True


def test_jwt_secret_key_wins_over_secret_key(make_app, tmp_path):
    """RIVER_ML_JWT_SECRET_KEY signs the tokens when set, whatever the app's SECRET_KEY; an app
    sharing the store with another token key refuses to start."""
    issuer = shared_app(make_app, tmp_path / "a", RIVER_ML_JWT_SECRET_KEY="jwt-one", SECRET_KEY="flask-one")
    token = access_token(issuer.test_client(), "alice", new_user(issuer))
    assert accepts(issuer, token)
    assert accepts(shared_app(make_app, tmp_path / "b", RIVER_ML_JWT_SECRET_KEY="jwt-one", SECRET_KEY="other"), token)
    for config in ({"SECRET_KEY": "flask-one"}, {"RIVER_ML_JWT_SECRET_KEY": "jwt-two"}):
        with pytest.raises(ConfigurationError, match="RIVER_ML_JWT_SECRET_KEY"):
            shared_app(make_app, tmp_path / "c", **config)


def test_secret_key_signs_when_there_is_no_jwt_secret_key(make_app, tmp_path):
    """Without RIVER_ML_JWT_SECRET_KEY a key derived from the app's SECRET_KEY signs the tokens
    (not SECRET_KEY itself)."""
    issuer = shared_app(make_app, tmp_path / "a", SECRET_KEY="flask-one")
    token = access_token(issuer.test_client(), "alice", new_user(issuer))
    assert accepts(shared_app(make_app, tmp_path / "b", SECRET_KEY="flask-one"), token)
    # Not SECRET_KEY itself: a token signed with it, as before keys were derived, is refused.
    valid, payload = URLSafeTimedSerializer("flask-one").loads_unsafe(token, salt="flask-river-ml access token")
    assert not valid and payload["user"] == "alice"
    for config in ({"RIVER_ML_JWT_SECRET_KEY": "flask-one"}, {"SECRET_KEY": "flask-two"}, {}):
        with pytest.raises(ConfigurationError, match="RIVER_ML_JWT_SECRET_KEY"):
            shared_app(make_app, tmp_path / "c", **config)


def test_generated_secret_is_kept_in_the_cache_dir(make_app, tmp_path):
    """Without either key a secret is generated in RIVER_ML_CACHE_DIR: apps sharing that folder accept each
    other's tokens, an app on the same store with another cache folder refuses to start."""
    cache = tmp_path / "cache"
    issuer = shared_app(make_app, tmp_path / "a", RIVER_ML_CACHE_DIR=str(cache))
    assert cache.is_dir() and any(cache.iterdir())
    token = access_token(issuer.test_client(), "alice", new_user(issuer))
    assert accepts(shared_app(make_app, tmp_path / "b", RIVER_ML_CACHE_DIR=str(cache)), token)
    for config in ({"RIVER_ML_CACHE_DIR": str(tmp_path / "other")}, {}):
        with pytest.raises(ConfigurationError, match="RIVER_ML_JWT_SECRET_KEY"):
            shared_app(make_app, tmp_path / "c", **config)


def test_generated_secret_is_the_same_after_a_restart(make_app, tmp_path):
    """Two apps on the same instance folder (a restart) share the default cache folder and its secret."""
    issuer = make_app(RIVER_ML_STORAGE_BACKEND="shelve", RIVER_ML_DISABLE_AUTHENTICATION=False)
    token = access_token(issuer.test_client(), "alice", new_user(issuer))
    FlaskRiverML.state(issuer).close()
    restarted = make_app(RIVER_ML_STORAGE_BACKEND="shelve", RIVER_ML_DISABLE_AUTHENTICATION=False)
    assert accepts(restarted, token)


SECOND_PROCESS = """
import base64, sys
from flask import Flask
from flask_river_ml import FlaskRiverML

instance, user, api_token = sys.argv[1:]
app = Flask("second_process", instance_path=instance)
app.config.update(RIVER_ML_STORAGE_BACKEND="shelve", RIVER_ML_DISABLE_AUTHENTICATION=False)
FlaskRiverML(app)
credentials = base64.b64encode(f"{user}:{api_token}".encode()).decode()
response = app.test_client().get("/api/auth/token/", headers={"Authorization": "Basic " + credentials})
assert response.status_code == 200, response.data
print(response.get_json()["token"])
FlaskRiverML.state(app).close()
"""


def test_another_process_on_the_same_folder_issues_accepted_tokens(make_app, tmp_path):
    """A token issued by a second process on the same instance folder (generated secret) works here."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="shelve", RIVER_ML_DISABLE_AUTHENTICATION=False)
    api_token = new_user(app)
    result = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, str(tmp_path / "instance"), "alice", api_token],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert accepts(app, token)


# --- a host app's own credentials check --------------------------------------------------------


def test_verify_credentials_replaces_the_stored_users(host_app):
    """@river_ml.verify_credentials: the host's check decides at the token endpoint, and its tokens work."""
    app, river_ml = host_app
    calls: list[tuple[str, str]] = []

    @river_ml.verify_credentials
    def check(username: str, token: str) -> bool:
        calls.append((username, token))
        return (username, token) == ("host-user", "host-token")

    assert callable(check)
    client = app.test_client()
    stored_token = new_user(app, "alice")
    token = access_token(client, "host-user", "host-token")
    assert ("host-user", "host-token") in calls
    assert client.get("/api/models/", headers=bearer(token)).status_code == 200
    uploaded = client.post("/api/model/regression/hosted/", data=dill.dumps(regressor()), headers=bearer(token))
    assert uploaded.status_code == 201, uploaded.get_json()
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("host-user", "wrong")))
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("intruder", "host-token")))
    # The stored users no longer count once the host checks credentials.
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", stored_token)))
    assert_challenge(client.get("/api/models/"))
    assert_challenge(client.get("/api/models/", headers=bearer("garbage")))


# --- in-process user calls ---------------------------------------------------------------------


def test_create_user_returns_a_token(user_app):
    """create_user returns a long random API token, different for every user."""
    with user_app.app_context():
        river_ml = FlaskRiverML()
        first = river_ml.create_user("alice", PASSWORD)
        second = river_ml.create_user("bob", PASSWORD)
    assert isinstance(first, str) and len(first) >= 32
    assert first != second


def test_duplicate_user_is_409(user_app):
    """Creating a user twice raises the package's error with status 409; the first token still works."""
    api_token = new_user(user_app)
    with user_app.app_context(), pytest.raises(RiverMLError) as raised:
        FlaskRiverML().create_user("alice", "another password")
    assert raised.value.status == 409
    assert isinstance(raised.value, UserExists)
    assert "alice" in raised.value.message
    assert grant(user_app.test_client(), "alice", api_token)["token"]


def test_get_token_with_wrong_password_raises_401(user_app):
    """get_token checks the password: a wrong one raises with status 401 and the token stays as it was."""
    api_token = new_user(user_app)
    with user_app.app_context(), pytest.raises(RiverMLError) as raised:
        FlaskRiverML().get_token("alice", "wrong password")
    assert raised.value.status == 401
    assert isinstance(raised.value, Unauthorized)
    assert grant(user_app.test_client(), "alice", api_token)["token"]


def test_get_token_of_an_unknown_user_raises(user_app):
    """get_token for a user that does not exist raises the package's error, and creates nobody."""
    with user_app.app_context():
        river_ml = FlaskRiverML()
        with pytest.raises(RiverMLError) as raised:
            river_ml.get_token("nobody", PASSWORD)
        assert raised.value.status in (401, 404)
        assert river_ml.users() == []


def test_delete_user_true_then_false(user_app):
    """delete_user is True for an existing user, then False."""
    new_user(user_app)
    with user_app.app_context():
        river_ml = FlaskRiverML()
        assert river_ml.delete_user("alice") is True
        assert river_ml.delete_user("alice") is False
        assert river_ml.users() == []


def test_users_are_sorted(user_app):
    """users() lists every user's name, sorted."""
    with user_app.app_context():
        river_ml = FlaskRiverML()
        assert river_ml.users() == []
        for name in ("carol", "alice", "bob", "Zed"):
            river_ml.create_user(name, PASSWORD)
        assert river_ml.users() == sorted(["carol", "alice", "bob", "Zed"])


@pytest.mark.parametrize("name", ["", "a b", "a:b", "../etc", "-dash", "x" * 200])
def test_invalid_user_names_are_refused(user_app, name):
    """A name that is not letters, digits, '.', '_' or '-' is refused with a 4xx error."""
    with user_app.app_context():
        river_ml = FlaskRiverML()
        with pytest.raises(RiverMLError) as raised:
            river_ml.create_user(name, PASSWORD)
        assert 400 <= raised.value.status < 500
        assert river_ml.users() == []


def test_only_hashes_are_stored(user_app):
    """The backend value under user:<name> holds neither the password nor the API token, before or after get_token."""
    with user_app.app_context():
        river_ml = FlaskRiverML()
        first = river_ml.create_user("alice", PASSWORD)
        backend = FlaskRiverML.state().backend
        raw = backend.get(layout.user("alice"))
        assert raw is not None
        for secret in (PASSWORD, first):
            assert secret.encode() not in raw
            assert base64.b64encode(secret.encode()) not in raw
        second = river_ml.get_token("alice", PASSWORD)
        raw = backend.get(layout.user("alice"))
        assert raw is not None
        for secret in (PASSWORD, first, second):
            assert secret.encode() not in raw


# --- the CLI -----------------------------------------------------------------------------------


def run(app: Flask, *args: str, input: str | None = None):
    return app.test_cli_runner().invoke(args=["river-ml", *args], input=input)


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def listed_users(output: str) -> list[str]:
    """The names list-users printed: the first column of its lines."""
    return [line.split("\t")[0] for line in output.splitlines()]


def assert_failed(result, *fragments: str) -> None:
    """A non-zero exit with a message and no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.output.strip(), "no message"
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)


def test_cli_create_user_prints_a_working_token(user_app):
    """create-user NAME --password P prints the API token alone on its last line; it works at the realm."""
    result = run(user_app, "create-user", "alice", "--password", PASSWORD)
    assert result.exit_code == 0, result.output
    token = last_line(result.output)
    assert " " not in token and len(token) >= 32
    assert grant(user_app.test_client(), "alice", token)["token"]
    with user_app.app_context():
        assert FlaskRiverML().users() == ["alice"]


def test_cli_create_user_prompts_for_the_password(user_app):
    """Without --password, create-user asks twice (hidden) and the password is the one typed."""
    result = run(user_app, "create-user", "alice", input="pw\npw\n")
    assert result.exit_code == 0, result.output
    token = last_line(result.output)
    assert "pw\n" not in result.output.replace(token, "")
    assert grant(user_app.test_client(), "alice", token)["token"]
    with user_app.app_context():
        assert FlaskRiverML().get_token("alice", "pw")


def test_cli_create_user_twice_fails(user_app):
    """create-user of an existing name: non-zero exit, a message, no traceback."""
    assert run(user_app, "create-user", "alice", "--password", PASSWORD).exit_code == 0
    assert_failed(run(user_app, "create-user", "alice", "--password", PASSWORD), "alice")


def test_cli_get_token_rotates(user_app):
    """get-token NAME --password P prints a new token on the last line; the old one stops working."""
    old = last_line(run(user_app, "create-user", "alice", "--password", PASSWORD).output)
    result = run(user_app, "get-token", "alice", "--password", PASSWORD)
    assert result.exit_code == 0, result.output
    new = last_line(result.output)
    assert new != old and " " not in new
    client = user_app.test_client()
    assert_unauthorized(client.get("/api/auth/token/", headers=basic("alice", old)))
    assert grant(client, "alice", new)["token"]


def test_cli_get_token_prompts_for_the_password(user_app):
    """Without --password, get-token asks for it."""
    run(user_app, "create-user", "alice", "--password", "pw")
    result = run(user_app, "get-token", "alice", input="pw\n")
    assert result.exit_code == 0, result.output
    assert grant(user_app.test_client(), "alice", last_line(result.output))["token"]


def test_cli_get_token_wrong_password_fails(user_app):
    """A wrong password: non-zero exit with a message, no traceback, and the token unchanged."""
    token = last_line(run(user_app, "create-user", "alice", "--password", PASSWORD).output)
    assert_failed(run(user_app, "get-token", "alice", "--password", "wrong"), "password")
    assert grant(user_app.test_client(), "alice", token)["token"]


def test_cli_get_token_unknown_user_fails(user_app):
    """get-token of an unknown user: non-zero exit with a message, no traceback."""
    assert_failed(run(user_app, "get-token", "nobody", "--password", PASSWORD), "nobody")


def test_cli_delete_user_then_list_users(user_app):
    """list-users prints one sorted name a line (then their scopes); delete-user removes one; deleting it
    again fails."""
    for name in ("carol", "alice", "bob"):
        assert run(user_app, "create-user", name, "--password", PASSWORD).exit_code == 0
    listed = run(user_app, "list-users")
    assert listed.exit_code == 0
    assert listed_users(listed.output) == ["alice", "bob", "carol"]
    deleted = run(user_app, "delete-user", "bob")
    assert deleted.exit_code == 0, deleted.output
    assert listed_users(run(user_app, "list-users").output) == ["alice", "carol"]
    assert_failed(run(user_app, "delete-user", "bob"), "bob")


def test_cli_delete_unknown_user_fails(user_app):
    """delete-user of a user that never existed: non-zero exit with a message, no traceback."""
    assert_failed(run(user_app, "delete-user", "ghost"), "ghost")


def test_cli_list_users_empty(user_app):
    """list-users with no users prints nothing and succeeds."""
    result = run(user_app, "list-users")
    assert result.exit_code == 0
    assert result.output.strip() == ""


def test_cli_and_http_see_the_same_users(user_app):
    """A user created in-process is listed by the CLI, and one deleted by the CLI loses its tokens."""
    client = user_app.test_client()
    token = access_token(client, "alice", new_user(user_app))
    assert listed_users(run(user_app, "list-users").output) == ["alice"]
    assert run(user_app, "delete-user", "alice").exit_code == 0
    assert_challenge(client.get("/api/models/", headers=bearer(token)))

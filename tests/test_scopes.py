"""Scopes and who may upload a pickle, through Flask's test client, the CLI runner and in-process calls.

Sections: what each route needs (every rule and method of the blueprint, a token of each scope);
scopes on users and tokens (records, narrowing, rotation); the ``--scope`` option of the CLI; a
host app's credentials check that grants scopes; pickle uploads with authentication off (the
loopback rule, ProxyFix) and on.
"""

from __future__ import annotations

import json
import re
from typing import Any

import dill
import pytest
from flask import Flask
from itsdangerous import URLSafeTimedSerializer
from riverapi.auth import parse_auth_header
from test_auth import MODEL, PASSWORD, X, Y, access_token, basic, bearer, regressor
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_river_ml import FlaskRiverML, layout
from flask_river_ml.auth import SCOPES, scopes_from
from flask_river_ml.errors import InvalidInput
from flask_river_ml.http.views import ROUTES

REMOTE = "203.0.113.7"

#: What each route needs, as the documentation states it: (rule, method) -> scope, or None for
#: the routes that never need a token.
EXPECTED_SCOPES: dict[tuple[str, str], str | None] = {
    ("/", "GET"): None,
    ("/auth/token/", "GET"): None,
    ("/dashboard/", "GET"): None,
    ("/models/", "GET"): "predict",
    ("/model/<name>/", "GET"): "predict",
    ("/predict/", "POST"): "predict",
    ("/predict/batch/", "POST"): "predict",
    ("/metrics/", "GET"): "predict",
    ("/stats/", "GET"): "predict",
    ("/stream/events/", "GET"): "predict",
    ("/stream/metrics/", "GET"): "predict",
    ("/dashboard/data/", "GET"): "predict",
    ("/learn/", "POST"): "learn",
    ("/learn/batch/", "POST"): "learn",
    ("/label/", "POST"): "learn",
    ("/model/", "DELETE"): "manage",
    ("/model/<name>/", "DELETE"): "manage",
    ("/model/<name>/", "POST"): "manage",
    ("/model/<flavor>/<name>/", "POST"): "manage",
    ("/model/download/<name>/", "GET"): "manage",
}
PROTECTED = sorted(key for key, scope in EXPECTED_SCOPES.items() if scope is not None)


# --- helpers -----------------------------------------------------------------------------------


def new_user(app: Flask, name: str, scopes: Any = SCOPES) -> str:
    """A user with ``scopes`` made through the auth object (what create_user delegates to)."""
    with app.app_context():
        return FlaskRiverML().create_user(name, PASSWORD, scopes)


def token_for(app: Flask, name: str, scopes: Any = SCOPES) -> dict[str, str]:
    """The Bearer header of a new user with ``scopes``."""
    return bearer(access_token(app.test_client(), name, new_user(app, name, scopes)))


def request_of(rule: str, method: str, identifier: str) -> tuple[str, dict[str, Any], int]:
    """(path, test-client keywords, the success status) of a valid call of one route."""
    path = "/api" + rule.replace("<flavor>/<name>", f"regression/{MODEL}-2").replace("<name>", MODEL)
    kwargs: dict[str, Any] = {}
    status = 200
    if (rule, method) == ("/model/<name>/", "POST"):  # the flavor is the only path part
        path, kwargs, status = "/api/model/regression/", {"data": dill.dumps(regressor())}, 201
    elif rule == "/model/<flavor>/<name>/":
        kwargs, status = {"data": dill.dumps(regressor())}, 201
    elif rule == "/model/":
        kwargs = {"json": {"model": MODEL}}
    elif rule == "/learn/":
        kwargs, status = {"json": {"model": MODEL, "features": X, "ground_truth": Y}}, 201
    elif rule == "/predict/":
        kwargs, status = {"json": {"model": MODEL, "features": X}}, 201
    elif rule == "/label/":
        kwargs = {"json": {"model": MODEL, "identifier": identifier, "label": Y}}
    elif rule == "/learn/batch/":
        kwargs, status = {"json": {"model": MODEL, "samples": [{"features": X, "ground_truth": Y}]}}, 201
    elif rule == "/predict/batch/":
        kwargs, status = {"json": {"model": MODEL, "samples": [{"features": X}]}}, 201
    elif rule in ("/metrics/", "/stats/"):
        kwargs = {"query_string": {"model": MODEL}}
    return path, kwargs, status


def observed(app: Flask) -> Any:
    """What a refused request must leave as it was: models, stats, metrics, the pending label."""
    with app.app_context():
        river_ml = FlaskRiverML()
        names = river_ml.models()
        return names, {name: (river_ml.stats(name), river_ml.metrics(name)) for name in names}


def assert_forbidden(response, scope: str, user: str) -> str:
    """A 403 JSON naming the missing scope and the user; the message."""
    assert response.status_code == 403, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json", response.data[:500]
    message = response.get_json()["message"]
    assert f"'{scope}' scope" in message and f"'{user}'" in message, message
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.endswith(f',error="insufficient_scope",scope="{scope}"'), challenge
    return message  # type: ignore[no-any-return]


@pytest.fixture
def scoped_app(make_app) -> Flask:
    """Authentication on (memory backend), the model MODEL stored and a prediction awaiting its label."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    with app.app_context():
        river_ml = FlaskRiverML()
        river_ml.add_model(regressor(), "regression", name=MODEL)
        river_ml.learn(MODEL, ground_truth=Y, features=X)
        app.config["identifier"] = river_ml.predict(X, MODEL)["identifier"]
    return app


# --- what each route needs -------------------------------------------------------------------


def test_every_route_has_the_documented_scope():
    """Every rule and method of the blueprint needs the scope the documentation gives it, and
    every scope is one a user can hold."""
    routed = {(route.rule, method): scope for route in ROUTES for method, (_, scope) in route.handlers.items()}
    assert set(routed) == set(EXPECTED_SCOPES)
    for key, scope in EXPECTED_SCOPES.items():
        if scope is not None:
            assert routed[key] == scope, key
    assert set(routed.values()) <= set(SCOPES)


@pytest.mark.parametrize(("rule", "method"), PROTECTED, ids=[f"{m}-{r}" for r, m in PROTECTED])
def test_each_route_with_a_token_of_each_scope(scoped_app, rule, method):
    """A token lacking the route's scope gets a 403 JSON naming it, and nothing changes; a token
    of that scope alone gets the route's success."""
    needed = EXPECTED_SCOPES[(rule, method)]
    client = scoped_app.test_client()
    path, kwargs, status = request_of(rule, method, scoped_app.config["identifier"])
    before = observed(scoped_app)
    for scope in SCOPES:
        if scope != needed:
            with client.open(path, method=method, headers=token_for(scoped_app, scope, scope), **kwargs) as response:
                assert_forbidden(response, needed, scope)
            assert observed(scoped_app) == before
    # Every scope but the needed one is still not enough.
    others = [scope for scope in SCOPES if scope != needed]
    with client.open(path, method=method, headers=token_for(scoped_app, "others", others), **kwargs) as response:
        message = assert_forbidden(response, needed, "others")
    assert message.endswith(f"has {', '.join(others)}."), message
    with client.open(path, method=method, headers=token_for(scoped_app, "allowed", needed), **kwargs) as response:
        assert response.status_code == status, (response.status_code, response.data[:500])


@pytest.mark.parametrize(("rule", "method"), PROTECTED, ids=[f"{m}-{r}" for r, m in PROTECTED])
def test_each_route_with_every_scope_and_without_a_token(scoped_app, rule, method):
    """Without a token each protected route is challenged (401); a token of every scope succeeds."""
    client = scoped_app.test_client()
    path, kwargs, status = request_of(rule, method, scoped_app.config["identifier"])
    with client.open(path, method=method, **kwargs) as response:
        assert response.status_code == 401
        assert parse_auth_header(response.headers["WWW-Authenticate"]).Realm == "http://localhost/api/auth/token/"
    with client.open(path, method=method, headers=token_for(scoped_app, "admin"), **kwargs) as response:
        assert response.status_code == status, (response.status_code, response.data[:500])


@pytest.mark.parametrize(("rule", "method"), [key for key in EXPECTED_SCOPES if EXPECTED_SCOPES[key] is None])
def test_open_routes_need_no_scope(scoped_app, rule, method):
    """The service's root, the token endpoint and the dashboard's page answer without a token."""
    client = scoped_app.test_client()
    headers = basic("viewer", new_user(scoped_app, "viewer", "learn")) if rule == "/auth/token/" else {}
    assert client.open("/api" + rule, method=method, headers=headers).status_code == 200


def test_head_needs_the_scope_of_get(scoped_app):
    """HEAD is answered as GET, so it needs GET's scope: no download's headers for a predict token."""
    client = scoped_app.test_client()
    refused = client.head(f"/api/model/download/{MODEL}/", headers=token_for(scoped_app, "reader", "predict"))
    assert refused.status_code == 403
    allowed = client.head(f"/api/model/download/{MODEL}/", headers=token_for(scoped_app, "keeper", "manage"))
    assert allowed.status_code == 200 and allowed.mimetype == "application/octet-stream"


def test_stream_token_in_the_query_needs_the_predict_scope(scoped_app):
    """The streams' ?token= is checked for its scope like the header."""
    client = scoped_app.test_client()
    learner = token_for(scoped_app, "learner", "learn")["Authorization"].split()[1]
    reader = token_for(scoped_app, "reader", "predict")["Authorization"].split()[1]
    with client.get("/api/stream/events/", query_string={"token": learner}) as response:
        assert_forbidden(response, "predict", "learner")
    with client.get("/api/stream/events/", query_string={"token": reader}) as response:
        assert response.status_code == 200 and response.mimetype == "text/event-stream"


def test_scopes_follow_custom_authenticated_views(make_app):
    """A view left out of RIVER_ML_AUTHENTICATED_VIEWS needs no scope; the others still do."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_AUTHENTICATED_VIEWS=["learn"]
    )
    with app.app_context():
        FlaskRiverML().add_model(regressor(), "regression", name=MODEL)
    client = app.test_client()
    headers = token_for(app, "reader", "predict")
    learn = {"model": MODEL, "features": X, "ground_truth": Y}
    assert_forbidden(client.post("/api/learn/", json=learn, headers=headers), "learn", "reader")
    assert client.post("/api/predict/", json={"model": MODEL, "features": X}, headers=headers).status_code == 201
    assert client.delete(f"/api/model/{MODEL}/", headers=headers).status_code == 200


# --- scopes of users and tokens ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "scopes"),
    [
        (SCOPES, SCOPES),
        (["manage", "predict"], ("predict", "manage")),
        ("learn", ("learn",)),
        ("manage, predict,,predict", ("predict", "manage")),
        ({"learn"}, ("learn",)),
        (iter(["predict", "learn"]), ("predict", "learn")),
    ],
)
def test_scope_names_are_read_in_one_order(names, scopes):
    """Scope names come as an iterable or a comma list, each once, in the order predict, learn, manage."""
    assert scopes_from(names) == scopes


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        ([], "at least one"),
        ("", "at least one"),
        (" , ", "at least one"),
        (["admin"], "'admin'"),
        ("predict,Manage", "'Manage'"),
        (["predict", 1], "strings"),
        (["predict", None], "strings"),
    ],
)
def test_bad_scope_names_are_refused(names, fragment):
    """No scope, an unknown scope (case counts) or a name that is not a string: InvalidInput saying so."""
    with pytest.raises(InvalidInput) as raised:
        scopes_from(names)
    assert fragment in raised.value.message
    assert raised.value.status == 400


def test_users_hold_their_scopes_on_every_backend(make_app, backend_name):
    """create_user keeps the scopes with the user (all three by default); get_token keeps them;
    set_scopes replaces them; an unknown scope creates nobody."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_DISABLE_AUTHENTICATION=False)
    with app.app_context():
        auth = FlaskRiverML.state().auth
        auth.create_user("alice", PASSWORD)
        auth.create_user("bob", PASSWORD, ["learn", "predict"])
        assert auth.scopes("alice") == SCOPES
        assert auth.scopes("bob") == ("predict", "learn")
        stored = json.loads(FlaskRiverML.state().backend.get(layout.user("bob")))
        assert stored["scopes"] == ["predict", "learn"]
        api_token = auth.get_token("bob", PASSWORD)
        assert auth.scopes("bob") == ("predict", "learn")
        assert auth.set_scopes("bob", "manage") == ("manage",)
        assert auth.scopes("bob") == ("manage",)
        with pytest.raises(InvalidInput):
            auth.create_user("carol", PASSWORD, ["admin"])
        with pytest.raises(InvalidInput):
            auth.set_scopes("bob", [])
        assert auth.scopes("bob") == ("manage",)
        assert auth.users() == ["alice", "bob"]
    client = app.test_client()
    headers = bearer(access_token(client, "bob", api_token))
    assert_forbidden(client.get("/api/models/", headers=headers), "predict", "bob")
    upload = client.post("/api/model/regression/by-bob/", data=dill.dumps(regressor()), headers=headers)
    assert upload.status_code == 201, upload.get_json()


def test_unknown_user_has_no_scopes_to_set(make_app):
    """set_scopes and scopes of a user that does not exist raise the 404 error, and create nobody."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    with app.app_context():
        auth = FlaskRiverML.state().auth
        for call in (lambda: auth.set_scopes("ghost", "predict"), lambda: auth.scopes("ghost")):
            with pytest.raises(Exception) as raised:
                call()
            assert getattr(raised.value, "status", None) == 404 and "ghost" in raised.value.message
        assert auth.users() == []


def test_a_user_recorded_before_scopes_holds_all_three(make_app, backend_name):
    """A user record without a scopes field (written by an earlier version) means every scope."""
    app = make_app(RIVER_ML_STORAGE_BACKEND=backend_name, RIVER_ML_DISABLE_AUTHENTICATION=False)
    api_token = new_user(app, "old", "predict")
    with app.app_context():
        backend = FlaskRiverML.state().backend
        record = json.loads(backend.get(layout.user("old")))
        del record["scopes"]
        backend.set(layout.user("old"), json.dumps(record).encode())
        assert FlaskRiverML.state().auth.scopes("old") == SCOPES
    client = app.test_client()
    headers = bearer(access_token(client, "old", api_token))
    assert client.post("/api/model/regression/old/", data=dill.dumps(regressor()), headers=headers).status_code == 201
    assert client.get("/api/models/", headers=headers).status_code == 200


def test_access_tokens_carry_the_scopes(scoped_app):
    """The signed payload of an access token names the user's scopes."""
    token = token_for(scoped_app, "bob", ["predict", "learn"])["Authorization"].split()[1]
    _, payload = URLSafeTimedSerializer("any key").loads_unsafe(token, salt="flask-river-ml access token")
    assert payload["user"] == "bob"
    assert payload["scopes"] == ["predict", "learn"]


def test_a_forged_wider_scope_is_refused(scoped_app):
    """A token whose payload was widened to manage, re-signed with a guessed key, is refused (401)."""
    token = token_for(scoped_app, "bob", "predict")["Authorization"].split()[1]
    _, payload = URLSafeTimedSerializer("any key").loads_unsafe(token, salt="flask-river-ml access token")
    forged = URLSafeTimedSerializer("secret", salt="flask-river-ml access token").dumps({**payload, "scopes": SCOPES})
    response = scoped_app.test_client().delete(f"/api/model/{MODEL}/", headers=bearer(forged))
    assert response.status_code == 401
    assert observed(scoped_app)[0] == [MODEL]


def test_narrowing_takes_effect_at_once_widening_with_the_next_token(scoped_app):
    """A token grants what it was issued with and the user still holds: it loses manage as soon
    as the user does, and a scope the user gains comes with the next access token."""
    client = scoped_app.test_client()
    api_token = new_user(scoped_app, "alice")
    issued_with_all = bearer(access_token(client, "alice", api_token))
    upload = dill.dumps(regressor())
    assert client.post("/api/model/regression/first/", data=upload, headers=issued_with_all).status_code == 201
    with scoped_app.app_context():
        assert FlaskRiverML().set_scopes("alice", "predict") == ("predict",)
    refused = client.post("/api/model/regression/second/", data=upload, headers=issued_with_all)
    assert assert_forbidden(refused, "manage", "alice").endswith("has predict.")
    assert client.get("/api/models/", headers=issued_with_all).status_code == 200
    issued_with_predict = bearer(access_token(client, "alice", api_token))
    with scoped_app.app_context():
        FlaskRiverML.state().auth.set_scopes("alice", ["predict", "manage"])
    refused = client.post("/api/model/regression/second/", data=upload, headers=issued_with_predict)
    assert_forbidden(refused, "manage", "alice")
    fresh = bearer(access_token(client, "alice", api_token))
    assert client.post("/api/model/regression/second/", data=upload, headers=fresh).status_code == 201
    learn = {"model": MODEL, "features": X, "ground_truth": Y}
    assert_forbidden(client.post("/api/learn/", json=learn, headers=fresh), "learn", "alice")
    assert_forbidden(client.post("/api/learn/", json=learn, headers=issued_with_all), "learn", "alice")
    assert stored(scoped_app) == ["first", "second", MODEL]


def test_deletion_and_rotation_still_revoke(scoped_app):
    """A deleted user's token, and the token of a rotated API token, are refused with 401, not 403."""
    client = scoped_app.test_client()
    headers = token_for(scoped_app, "alice", "predict")
    with scoped_app.app_context():
        FlaskRiverML.state().auth.get_token("alice", PASSWORD)
    assert client.get("/api/models/", headers=headers).status_code == 401
    assert client.delete(f"/api/model/{MODEL}/", headers=headers).status_code == 401
    headers = token_for(scoped_app, "bob", "manage")
    with scoped_app.app_context():
        FlaskRiverML.state().auth.delete_user("bob")
    assert client.delete(f"/api/model/{MODEL}/", headers=headers).status_code == 401
    assert observed(scoped_app)[0] == [MODEL]


# --- the CLI -----------------------------------------------------------------------------------


def run(app: Flask, *args: str):
    return app.test_cli_runner().invoke(args=["river-ml", *args])


def created_token(app: Flask, name: str, *options: str) -> str:
    result = run(app, "create-user", name, "--password", PASSWORD, *options)
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert " " not in token and len(token) >= 32, result.output
    return token


@pytest.mark.parametrize(
    ("options", "scopes"),
    [
        ((), SCOPES),
        (("--scope", "predict"), ("predict",)),
        (("--scope", "learn", "--scope", "predict"), ("predict", "learn")),
        (("--scope", "manage,predict"), ("predict", "manage")),
        (("--scope", "manage", "--scope", "predict,learn"), SCOPES),
    ],
    ids=["default", "one", "repeated", "comma-list", "both"],
)
def test_cli_create_user_with_scopes(scoped_app, options, scopes):
    """create-user --scope (repeated or a comma list; every scope without it) gives the user
    those scopes, says so, and prints the API token alone on the last line."""
    result = run(scoped_app, "create-user", "carol", "--password", PASSWORD, *options)
    assert result.exit_code == 0, result.output
    assert f"scopes {', '.join(scopes)}." in result.output
    headers = bearer(access_token(scoped_app.test_client(), "carol", result.output.strip().splitlines()[-1]))
    with scoped_app.app_context():
        assert FlaskRiverML.state().auth.scopes("carol") == scopes
    client = scoped_app.test_client()
    models = client.get("/api/models/", headers=headers)
    assert models.status_code == (200 if "predict" in scopes else 403)
    download = client.get(f"/api/model/download/{MODEL}/", headers=headers)
    assert download.status_code == (200 if "manage" in scopes else 403)


@pytest.mark.parametrize("value", ["admin", "predict,admin", "PREDICT", ","])
def test_cli_create_user_with_an_unknown_scope_fails(scoped_app, value):
    """An unknown or empty --scope: exit status 2 with click's usage error naming it, and no user."""
    result = run(scoped_app, "create-user", "carol", "--password", PASSWORD, "--scope", value)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "--scope" in result.output
    assert ("at least one" if value == "," else "Unknown scope") in result.output
    with scoped_app.app_context():
        assert FlaskRiverML().users() == []


def test_cli_list_users_shows_scopes(scoped_app):
    """list-users prints name, a tab and the scopes, one user a line, sorted by name."""
    created_token(scoped_app, "bob", "--scope", "learn")
    created_token(scoped_app, "alice")
    result = run(scoped_app, "list-users")
    assert result.exit_code == 0
    assert result.output.splitlines() == ["alice\tpredict,learn,manage", "bob\tlearn"]


def test_cli_set_scopes(scoped_app):
    """set-scopes NAME --scope ... replaces the user's scopes, and a token already issued loses
    the ones removed; without --scope, or for an unknown user, it fails without a traceback."""
    client = scoped_app.test_client()
    headers = bearer(access_token(client, "alice", created_token(scoped_app, "alice")))
    assert client.get(f"/api/model/download/{MODEL}/", headers=headers).status_code == 200
    result = run(scoped_app, "set-scopes", "alice", "--scope", "predict", "--scope", "learn")
    assert result.exit_code == 0, result.output
    assert "predict, learn" in result.output
    assert_forbidden(client.get(f"/api/model/download/{MODEL}/", headers=headers), "manage", "alice")
    assert run(scoped_app, "list-users").output.splitlines() == ["alice\tpredict,learn"]
    missing = run(scoped_app, "set-scopes", "alice")
    assert missing.exit_code == 2 and "--scope" in missing.output
    unknown = run(scoped_app, "set-scopes", "ghost", "--scope", "predict")
    assert unknown.exit_code == 1 and "ghost" in unknown.output and "Traceback" not in unknown.output
    with scoped_app.app_context():
        assert FlaskRiverML().users() == ["alice"]


def test_cli_get_token_keeps_the_scopes(scoped_app):
    """get-token gives a new API token; its access tokens carry the scopes the user had."""
    created_token(scoped_app, "bob", "--scope", "predict")
    result = run(scoped_app, "get-token", "bob", "--password", PASSWORD)
    assert result.exit_code == 0, result.output
    client = scoped_app.test_client()
    headers = bearer(access_token(client, "bob", result.output.strip().splitlines()[-1]))
    assert client.get("/api/models/", headers=headers).status_code == 200
    assert_forbidden(client.delete(f"/api/model/{MODEL}/", headers=headers), "manage", "bob")


# --- a host app's credentials check ------------------------------------------------------------


@pytest.fixture
def host_app(scoped_app) -> tuple[Flask, FlaskRiverML]:
    """The app of ``scoped_app`` and its extension object, for a host app's check."""
    return scoped_app, FlaskRiverML.state(scoped_app).extension


def test_verify_credentials_may_grant_scopes(host_app):
    """The host's check returns True (every scope) or scope names (those): tokens carry them."""
    app, river_ml = host_app

    grants = {
        "all": lambda: True,
        "reader": lambda: ["predict"],
        "learner": lambda: "predict,learn",
        "keeper": lambda: {"manage"},
        "generated": lambda: (scope for scope in ("learn",)),
    }

    @river_ml.verify_credentials
    def check(username: str, token: str) -> Any:
        return grants[username]() if token == "host-token" else False

    client = app.test_client()
    tokens = {user: bearer(access_token(client, user, "host-token")) for user in grants}
    expected = {
        "all": SCOPES,
        "reader": ("predict",),
        "learner": ("predict", "learn"),
        "keeper": ("manage",),
        "generated": ("learn",),
    }
    for user, held in expected.items():
        models = client.get("/api/models/", headers=tokens[user])
        learn = client.post(
            "/api/learn/", json={"model": MODEL, "features": X, "ground_truth": Y}, headers=tokens[user]
        )
        download = client.get(f"/api/model/download/{MODEL}/", headers=tokens[user])
        assert models.status_code == (200 if "predict" in held else 403), user
        assert learn.status_code == (201 if "learn" in held else 403), user
        assert download.status_code == (200 if "manage" in held else 403), user
        if "manage" not in held:
            assert_forbidden(download, "manage", user)


@pytest.mark.parametrize("refusal", [False, None, [], "", set()], ids=repr)
def test_verify_credentials_refusals(host_app, refusal):
    """False, None or no scope at all refuses at the token endpoint with 401 JSON."""
    app, river_ml = host_app
    river_ml.verify_credentials(lambda username, token: refusal)
    response = app.test_client().get("/api/auth/token/", headers=basic("someone", "host-token"))
    assert response.status_code == 401 and response.get_json()["message"]


@pytest.mark.parametrize(
    ("result", "fragment"),
    [(["predict", "admin"], "'admin'"), ("superuser", "'superuser'"), (1, "int"), (b"predict", "bytes"), ({}, "dict")],
    ids=["unknown-in-list", "unknown-string", "int", "bytes", "dict"],
)
def test_verify_credentials_returning_unknown_scopes_is_a_configuration_error(host_app, caplog, result, fragment):
    """A check that returns an unknown scope or a value of another kind issues no token: the host
    app's bug is answered with a JSON error naming it, and logged."""
    app, river_ml = host_app
    river_ml.verify_credentials(lambda username, token: result)
    response = app.test_client().get("/api/auth/token/", headers=basic("someone", "host-token"))
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert "verify_credentials" in message and fragment in message, message
    assert "token" not in response.get_json()
    assert any("verify_credentials" in record.getMessage() for record in caplog.records)


# --- pickle uploads ----------------------------------------------------------------------------


@pytest.fixture
def open_app(make_app) -> Flask:
    """Authentication off, the default RIVER_ML_UPLOAD_PICKLES."""
    return make_app(RIVER_ML_STORAGE_BACKEND="memory")


def upload(app: Flask, address: str, path: str = "/api/model/regression/mine/", **kwargs: Any):
    return app.test_client().post(path, data=dill.dumps(regressor()), environ_base={"REMOTE_ADDR": address}, **kwargs)


def stored(app: Flask) -> list[str]:
    with app.app_context():
        return FlaskRiverML().models()


@pytest.mark.parametrize("path", ["/api/model/regression/mine/", "/api/model/regression/"])
@pytest.mark.parametrize("address", [REMOTE, "10.0.0.8", "2001:db8::7", "::ffff:203.0.113.7", "0.0.0.0", "", "unix"])
def test_pickle_from_a_remote_client_is_403_without_auth(open_app, address, path):
    """With authentication off a pickle from a non-loopback address (or none that is an IP address)
    is refused with a 403 JSON naming the setting, and nothing is stored."""
    response = upload(open_app, address, path)
    assert response.status_code == 403, response.data[:500]
    assert response.mimetype == "application/json"
    message = response.get_json()["message"]
    assert "RIVER_ML_UPLOAD_PICKLES" in message and "'any'" in message and "ProxyFix" in message, message
    assert stored(open_app) == []


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.0.2", "::ffff:127.0.0.1"])
def test_pickle_from_loopback_is_accepted_without_auth(open_app, address):
    """The quick start's case: a pickle from the same machine, over IPv4 or IPv6, is stored and served."""
    response = upload(open_app, address)
    assert response.status_code == 201, response.data[:500]
    assert stored(open_app) == ["mine"]
    client = open_app.test_client()
    predicted = client.post(
        "/api/predict/", json={"model": "mine", "features": X}, environ_base={"REMOTE_ADDR": REMOTE}
    )
    assert predicted.status_code == 201


def test_upload_pickles_any_accepts_remote_clients(make_app):
    """RIVER_ML_UPLOAD_PICKLES = 'any' opens pickle uploads to remote clients."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_UPLOAD_PICKLES="any")
    assert upload(app, REMOTE).status_code == 201
    assert stored(app) == ["mine"]


def test_json_description_from_a_remote_client_is_not_refused_by_the_pickle_rule(open_app):
    """A JSON description needs no pickle: the loopback rule does not apply to it."""
    for body in ('{"class": "river.linear_model.LinearRegression"}', "  [1]", "{}"):
        response = open_app.test_client().post(
            "/api/model/regression/described/", data=body, environ_base={"REMOTE_ADDR": REMOTE}
        )
        assert response.status_code != 403, response.data[:500]
        assert response.status_code < 500 and response.mimetype == "application/json", response.data[:500]


def test_other_manage_routes_are_not_limited_to_loopback(open_app):
    """Only pickle uploads are: with authentication off a remote client may download and delete."""
    assert upload(open_app, "127.0.0.1").status_code == 201
    client = open_app.test_client()
    remote = {"REMOTE_ADDR": REMOTE}
    assert client.get("/api/model/download/mine/", environ_base=remote).status_code == 200
    assert client.delete("/api/model/mine/", environ_base=remote).status_code == 200


def test_a_forwarded_header_is_ignored_without_proxy_fix(open_app):
    """X-Forwarded-For from the client itself does not make it local."""
    forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
    assert upload(open_app, REMOTE, headers=forged).status_code == 403
    assert stored(open_app) == []


def test_behind_proxy_fix_the_client_address_decides(open_app):
    """Wrapped in ProxyFix (one proxy on the same machine), the forwarded address is the client's:
    a remote client behind the proxy is refused, a local one accepted."""
    open_app.wsgi_app = ProxyFix(open_app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    refused = upload(open_app, "127.0.0.1", headers={"X-Forwarded-For": REMOTE})
    assert refused.status_code == 403 and REMOTE in refused.get_json()["message"]
    # Only the last hop counts: a client cannot pass itself off as local by adding its own.
    assert upload(open_app, "127.0.0.1", headers={"X-Forwarded-For": f"127.0.0.1, {REMOTE}"}).status_code == 403
    assert stored(open_app) == []
    assert upload(open_app, "127.0.0.1", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 201


def test_with_auth_a_remote_user_with_manage_may_upload_a_pickle(scoped_app):
    """With authentication on the manage scope decides, not the address."""
    keeper = token_for(scoped_app, "keeper", "manage")
    reader = token_for(scoped_app, "reader", ["predict", "learn"])
    assert_forbidden(upload(scoped_app, REMOTE, headers=reader), "manage", "reader")
    assert upload(scoped_app, REMOTE, headers=keeper).status_code == 201
    assert stored(scoped_app) == sorted([MODEL, "mine"])


def test_with_auth_but_an_open_model_view_the_loopback_rule_holds(make_app):
    """Authentication on but the model view left open: pickles again come from loopback clients only."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False, RIVER_ML_AUTHENTICATED_VIEWS=["learn"]
    )
    headers = token_for(app, "keeper", "manage")
    response = upload(app, REMOTE, headers=headers)
    assert response.status_code == 403 and "RIVER_ML_UPLOAD_PICKLES" in response.get_json()["message"]
    assert upload(app, "::1").status_code == 201
    assert stored(app) == ["mine"]


def test_the_forbidden_message_names_the_address(open_app):
    """The 403 says which address was seen, so a proxy's own address is easy to spot."""
    message = upload(open_app, "192.0.2.1").get_json()["message"]
    assert re.search(r"\b192\.0\.2\.1\b", message), message

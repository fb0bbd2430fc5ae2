"""End to end with authentication on: users made with the real ``flask river-ml`` CLI, the
example server under gunicorn, and riverapi going through the Bearer challenge."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dill
import pytest
import requests
from river import datasets, linear_model, preprocessing
from riverapi.auth import parse_auth_header
from riverapi.main import Client
from servers import FLASK, ROOT, Server, predict_and_download, serve, server_env

pytestmark = [pytest.mark.gunicorn]

#: The server's settings, from its environment: authentication on.
AUTH_ON = {"FLASK_RIVER_ML_DISABLE_AUTHENTICATION": "false"}
#: name -> password; alice runs the whole riverapi flow, bob gets a new API token, carol may
#: only read (the predict scope).
PASSWORDS = {"alice": "secret", "bob": "b0b-s3cret", "carol": "c4r0l"}
#: name -> the create-user options beyond the password (every scope without --scope).
SCOPE_OPTIONS = {"carol": ("--scope", "predict")}


def river_ml_cli(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``flask --app examples.app river-ml ...`` on the store of the server in ``folder``."""
    return subprocess.run(
        [str(FLASK), "--app", "examples.app", "river-ml", *arguments],
        cwd=ROOT,
        env=server_env(folder, AUTH_ON),
        capture_output=True,
        text=True,
        timeout=120,
    )


def printed_token(completed: subprocess.CompletedProcess[str]) -> str:
    """The API token the CLI printed alone on its last line."""
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    token = completed.stdout.splitlines()[-1]
    assert token and token == token.strip() and " " not in token, completed.stdout
    return token


@dataclass
class AuthServer:
    server: Server
    folder: Path
    #: name -> the API token create-user printed.
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token_url(self) -> str:
        return f"{self.server.url}/api/auth/token/"


@pytest.fixture(scope="module")
def auth(tmp_path_factory) -> Iterator[AuthServer]:
    """The example server with authentication on, its users made by the CLI beforehand."""
    folder = tmp_path_factory.mktemp("e2e_auth_server")
    tokens = {
        name: printed_token(
            river_ml_cli(folder, "create-user", name, "--password", password, *SCOPE_OPTIONS.get(name, ()))
        )
        for name, password in PASSWORDS.items()
    }
    with serve(folder, env=AUTH_ON, workers=2, access_log=True) as server:
        yield AuthServer(server, folder, tokens)


def assert_clean_log(server: Server) -> None:
    """No traceback nor error in the server's log, and no request answered with a 5xx."""
    answered = server.requests()
    log = server.log_text()
    assert "Traceback" not in log, log
    assert "[ERROR]" not in log, log
    assert not [entry for entry in answered if entry.status >= 500], log


def assert_unauthorized(response: requests.Response, base_url: str) -> dict[str, Any]:
    """A 401 with a JSON message and riverapi's challenge, pointing at the server itself."""
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge == f'Bearer realm="{base_url}/api/auth/token/",service="{base_url}"'
    parsed = parse_auth_header(challenge)
    assert (parsed.Realm, parsed.Service) == (f"{base_url}/api/auth/token/", base_url)
    return body  # type: ignore[no-any-return]


def basic(name: str, api_token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{api_token}".encode()).decode()


def access_token(auth: AuthServer, name: str, api_token: str) -> requests.Response:
    return requests.get(auth.token_url, auth=(name, api_token), timeout=10)


# --- riverapi's whole flow --------------------------------------------------------------------


def test_every_client_method_with_authentication(auth, tmp_path, monkeypatch):
    monkeypatch.setenv("RIVER_ML_USER", "alice")
    monkeypatch.setenv("RIVER_ML_TOKEN", auth.tokens["alice"])
    before = auth.server.requests()
    cli = Client(auth.url, quiet=False)

    # The service's root is public: no token asked for.
    info = cli.info()
    assert info["id"] == "flask_river_ml"
    assert info["status"] == "running"
    assert info["storage"] == "shelve"
    assert "Authorization" not in cli.headers

    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    generated = cli.upload_model(model, "regression")
    # The first protected call met the challenge; riverapi now holds an access token.
    assert cli.headers["Authorization"].startswith("Bearer ")
    name = cli.upload_model(model, "regression", "e2e-auth")
    assert name == "e2e-auth"
    assert generated != name
    assert {generated, name} <= set(cli.models()["models"])

    samples = list(datasets.TrumpApproval().take(60))
    for x, y in samples[:50]:
        assert cli.learn(name, x, y) == "Successful learn."

    params = cli.get_model_json(name)
    assert set(params) == {"StandardScaler", "LinearRegression"}
    assert params["LinearRegression"]["l2"] == 0.0

    x, y = samples[50]
    result, downloaded = predict_and_download(cli, name, x, tmp_path)

    assert cli.label(y, result["identifier"], name) == "Successful label."
    downloaded.learn_one(x, y)
    for x, _ in samples[51:]:
        assert cli.predict(name, x)["prediction"] == downloaded.predict_one(x)

    served_metrics = cli.metrics(name)
    assert set(served_metrics) == {"MAE", "RMSE", "SMAPE"}
    assert all(value > 0 for value in served_metrics.values())
    # Never fed: null, which riverapi hands back as None.
    assert cli.metrics(generated) == {"MAE": None, "RMSE": None, "SMAPE": None}

    stats = cli.stats(name)
    # 50 learns; 1 + 9 predictions.
    assert stats["learn"]["n_calls"] == 50
    assert stats["predict"]["n_calls"] == 10

    cli.delete_model(generated)
    cli.delete_model(name)
    assert not {generated, name} & set(cli.models()["models"])
    # riverapi exits on an unsuccessful response: the model is gone (404), not forbidden.
    with pytest.raises(SystemExit):
        cli.metrics(name)

    # One challenge and one token exchange (Basic, as alice) for the whole flow: riverapi
    # reused its access token, and the server took it every time.
    flow = auth.server.requests()[len(before) :]
    assert [entry.status for entry in flow if entry.status == 401] == [401]
    token_calls = [entry for entry in flow if entry.path == "/api/auth/token/"]
    assert [(entry.method, entry.status, entry.user) for entry in token_calls] == [("GET", 200, "alice")]
    assert sorted({entry.status for entry in flow}) == [200, 201, 401, 404]
    assert_clean_log(auth.server)


# --- without credentials, with wrong ones -----------------------------------------------------


def test_client_without_credentials_exits(auth, monkeypatch):
    monkeypatch.delenv("RIVER_ML_USER", raising=False)
    monkeypatch.delenv("RIVER_ML_TOKEN", raising=False)
    cli = Client(auth.url, quiet=True)
    assert cli.info()["status"] == "running"
    with pytest.raises(SystemExit):
        cli.models()
    with pytest.raises(SystemExit):
        cli.upload_model(linear_model.LinearRegression(), "regression")
    assert_clean_log(auth.server)


def test_plain_request_gets_the_challenge(auth):
    with requests.get(auth.url + "/api/models/", timeout=10) as response:
        assert_unauthorized(response, auth.url)
    # Every protected view, whatever the method it serves.
    for method, path in [
        ("POST", "/api/learn/"),
        ("POST", "/api/predict/"),
        ("POST", "/api/label/"),
        ("GET", "/api/metrics/"),
        ("GET", "/api/stats/"),
        ("GET", "/api/model/anything/"),
        ("GET", "/api/model/download/anything/"),
        ("POST", "/api/model/regression/"),
        ("DELETE", "/api/model/"),
    ]:
        with requests.request(method, auth.url + path, timeout=10) as response:
            assert_unauthorized(response, auth.url)
    assert_clean_log(auth.server)


def test_wrong_api_token_fails_without_server_error(auth, monkeypatch):
    monkeypatch.setenv("RIVER_ML_USER", "alice")
    monkeypatch.setenv("RIVER_ML_TOKEN", "not-" + auth.tokens["alice"])
    before = auth.server.requests()
    cli = Client(auth.url, quiet=True)
    with pytest.raises(SystemExit):
        cli.models()
    # The challenge, then the token endpoint refusing alice's wrong token: both 401s (in
    # either order in the log: each worker logs a request once it has answered it).
    answered = auth.server.requests()[len(before) :]
    assert sorted((entry.path, entry.status, entry.user) for entry in answered) == [
        ("/api/auth/token/", 401, "alice"),
        ("/api/models/", 401, "-"),
    ]

    # Straight at the token endpoint: wrong token, unknown user, no or malformed credentials.
    for headers in [
        {"Authorization": basic("alice", "wrong")},
        {"Authorization": basic("mallory", auth.tokens["alice"])},
        {"Authorization": basic("alice", "")},
        {},
        {"Authorization": "Basic"},
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Basic bm8tY29sb24="},  # "no-colon"
        {"Authorization": "Bearer " + auth.tokens["alice"]},
        {"Authorization": "Digest username=alice"},
    ]:
        with requests.get(auth.token_url, headers=headers, timeout=10) as response:
            assert_unauthorized(response, auth.url)
    # A made-up access token at a protected view.
    with requests.get(
        auth.url + "/api/models/", headers={"Authorization": "Bearer made.up.token"}, timeout=10
    ) as response:
        assert_unauthorized(response, auth.url)
    assert_clean_log(auth.server)


# --- a new API token ---------------------------------------------------------------------------


def test_get_token_replaces_the_api_token(auth, monkeypatch):
    old = auth.tokens["bob"]
    monkeypatch.setenv("RIVER_ML_USER", "bob")
    monkeypatch.setenv("RIVER_ML_TOKEN", old)
    old_client = Client(auth.url, quiet=True)
    assert isinstance(old_client.models()["models"], list)
    with access_token(auth, "bob", old) as response:
        assert response.status_code == 200, response.text
        old_access = response.json()["token"]

    # A wrong password changes nothing: a message, exit status 1, no traceback.
    refused = river_ml_cli(auth.folder, "get-token", "bob", "--password", "not-bobs")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Wrong password." in refused.stderr
    assert "Traceback" not in refused.stderr

    new = printed_token(river_ml_cli(auth.folder, "get-token", "bob", "--password", PASSWORDS["bob"]))
    assert new != old

    with access_token(auth, "bob", new) as response:
        assert response.status_code == 200, response.text
        grant = response.json()
        assert set(grant) == {"token", "expires_in", "issued_at"}
    with access_token(auth, "bob", old) as response:
        assert_unauthorized(response, auth.url)
    # The access tokens of the old API token stop working too.
    with requests.get(
        auth.url + "/api/models/", headers={"Authorization": f"Bearer {old_access}"}, timeout=10
    ) as response:
        assert_unauthorized(response, auth.url)
    with requests.get(
        auth.url + "/api/models/", headers={"Authorization": f"Bearer {grant['token']}"}, timeout=10
    ) as response:
        assert response.status_code == 200, response.text

    # riverapi: the client holding the old token is refused, one with the new token gets in.
    with pytest.raises(SystemExit):
        old_client.models()
    monkeypatch.setenv("RIVER_ML_TOKEN", new)
    new_client = Client(auth.url, quiet=True)
    name = new_client.upload_model(linear_model.LinearRegression(), "regression", "e2e-auth-bob")
    assert name in new_client.models()["models"]
    new_client.delete_model(name)
    # alice is untouched.
    with access_token(auth, "alice", auth.tokens["alice"]) as response:
        assert response.status_code == 200, response.text
    assert_clean_log(auth.server)


# --- scopes ------------------------------------------------------------------------------------


def test_a_predict_only_user_predicts_but_cannot_upload(auth, monkeypatch):
    """carol, made by the real CLI with --scope predict, follows riverapi's flow: she reads models
    and predicts like the model's owner, and her upload, learn and delete are refused with 403."""
    listed = river_ml_cli(auth.folder, "list-users")
    assert listed.returncode == 0, listed.stderr
    assert "carol\tpredict" in listed.stdout.splitlines()

    monkeypatch.setenv("RIVER_ML_USER", "alice")
    monkeypatch.setenv("RIVER_ML_TOKEN", auth.tokens["alice"])
    owner = Client(auth.url, quiet=True)
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    name = owner.upload_model(model, "regression", "e2e-scopes")
    samples = list(datasets.TrumpApproval().take(30))
    for x, y in samples[:20]:
        owner.learn(name, x, y)
        model.learn_one(x, y)

    monkeypatch.setenv("RIVER_ML_USER", "carol")
    monkeypatch.setenv("RIVER_ML_TOKEN", auth.tokens["carol"])
    before = auth.server.requests()
    reader = Client(auth.url, quiet=True)
    assert name in reader.models()["models"]
    for x, _ in samples[20:]:
        assert reader.predict(name, x)["prediction"] == model.predict_one(x)
    # riverapi exits on any answer but 200 and 201.
    with pytest.raises(SystemExit):
        reader.upload_model(linear_model.LinearRegression(), "regression", "by-carol")
    with pytest.raises(SystemExit):
        reader.learn(name, samples[0][0], samples[0][1])
    with pytest.raises(SystemExit):
        reader.delete_model(name)
    answered = auth.server.requests()[len(before) :]
    assert sorted((entry.method, entry.path, entry.status) for entry in answered if entry.status == 403) == [
        ("DELETE", "/api/model/", 403),  # riverapi names the model in the body
        ("POST", "/api/learn/", 403),
        ("POST", "/api/model/regression/by-carol/", 403),
    ]

    # The same upload by hand: a JSON 403 naming the scope carol lacks.
    with access_token(auth, "carol", auth.tokens["carol"]) as response:
        assert response.status_code == 200, response.text
        bearer = {"Authorization": f"Bearer {response.json()['token']}"}
    with requests.post(
        auth.url + "/api/model/regression/by-carol/", data=dill.dumps(model), headers=bearer, timeout=10
    ) as response:
        assert response.status_code == 403, response.text
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["message"] == "This view needs the 'manage' scope; the user 'carol' has predict."
    assert "by-carol" not in owner.models()["models"]
    assert owner.stats(name)["learn"]["n_calls"] == 20
    owner.delete_model(name)
    assert_clean_log(auth.server)

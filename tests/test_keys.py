"""Hosts that share a store share its keys, or refuse to start.

Two "hosts" are two apps with instance folders of their own (so cache folders of their own,
where keys are generated), sharing one store: one redis prefix, or one shelve file through
RIVER_ML_SHELVE_PATH. Then the same with two real gunicorn servers on one redis prefix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import dill
import pytest
import redis
import requests
from flask import Flask
from river import datasets, linear_model, preprocessing
from servers import APP, GUNICORN, ROOT, free_port, serve, server_env

from flask_river_ml import ConfigurationError, FlaskRiverML, StoreUnavailable, TamperedData, layout
from flask_river_ml.keys import (
    BLOB_KEY,
    TOKEN_KEY,
    KeyCheck,
    KeysDiffer,
    derived_key,
    matches,
    resolve,
)
from flask_river_ml.storage.memory import MemoryBackend
from flask_river_ml.storage.shelve import ShelveBackend

SAMPLES = list(datasets.TrumpApproval().take(12))
PASSWORD = "correct horse battery staple"
SHARED = ["shelve", "redis"]


def regressor() -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def host(make_app, tmp_path: Path, name: str, backend: str, **config: Any) -> Flask:
    """A host of its own folder on the store every host of the test shares."""
    return make_app(
        instance_path=tmp_path / name,
        RIVER_ML_STORAGE_BACKEND=backend,
        RIVER_ML_SHELVE_PATH=str(tmp_path / "shared.shelve"),
        **config,
    )


def stored(app: Flask, setting: str) -> dict[str, Any]:
    """The fingerprint record the store of ``app`` keeps for ``setting``."""
    raw = FlaskRiverML.state(app).backend.get(layout.fingerprint(setting))
    assert raw is not None
    record: dict[str, Any] = json.loads(raw)
    return record


def bearer(app: Flask, user: str, api_token: str) -> dict[str, str]:
    """The Authorization header of an access token that ``app`` issues to ``user``."""
    basic = base64.b64encode(f"{user}:{api_token}".encode()).decode()
    response = app.test_client().get("/api/auth/token/", headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['token']}"}


# --- where the keys come from ------------------------------------------------------------------


def test_keys_derived_from_secret_key_differ_from_it_and_from_each_other():
    blob, token = derived_key("one secret", BLOB_KEY), derived_key("one secret", TOKEN_KEY)
    assert len({blob, token, "one secret"}) == 3
    assert len(blob) == len(token) == 64 and int(blob, 16) and int(token, 16)
    # Deterministic, for str and bytes alike: hosts sharing SECRET_KEY derive the same keys.
    assert derived_key(b"one secret", BLOB_KEY) == blob and derived_key("one secret", TOKEN_KEY) == token
    assert derived_key("another secret", BLOB_KEY) != blob


def test_where_each_key_comes_from(tmp_path):
    """The setting wins; then a generated blob key already in the cache folder; then SECRET_KEY;
    then a key generated now. For the token key SECRET_KEY wins over the cache folder."""
    cache = str(tmp_path / "cache")
    assert resolve(BLOB_KEY, "set", "secret", cache).value == "set"
    derived = resolve(BLOB_KEY, None, "secret", cache)
    assert derived.value == derived_key("secret", BLOB_KEY) and not derived.random
    assert not (tmp_path / "cache").exists(), "a derived key writes nothing"
    generated = resolve(BLOB_KEY, None, None, cache)
    assert generated.random and generated.value == (tmp_path / "cache" / "shelve_secret_key").read_text()
    # Once generated, the blob key keeps winning over SECRET_KEY: stored models stay readable.
    assert resolve(BLOB_KEY, None, "secret", cache).value == generated.value
    generated_token = resolve(TOKEN_KEY, None, None, cache)
    assert generated_token.value not in (generated.value, derived.value)
    assert resolve(TOKEN_KEY, None, "secret", cache).value == derived_key("secret", TOKEN_KEY)
    assert resolve(TOKEN_KEY, None, None, cache).value == generated_token.value


# --- the store's fingerprints --------------------------------------------------------------------


@pytest.mark.parametrize("backend", SHARED)
def test_hosts_with_different_generated_keys_refuse_to_start(make_app, tmp_path, backend):
    first = host(make_app, tmp_path, "a", backend)
    with first.app_context():
        FlaskRiverML().add_model(regressor(), "regression", name="kept")
    second = Flask("second_host", instance_path=str(tmp_path / "b"))
    second.config.update(
        RIVER_ML_STORAGE_BACKEND=backend,
        RIVER_ML_SHELVE_PATH=str(tmp_path / "shared.shelve"),
        RIVER_ML_REDIS_URL=first.config["RIVER_ML_REDIS_URL"],
        RIVER_ML_REDIS_PREFIX=first.config["RIVER_ML_REDIS_PREFIX"],
    )
    with pytest.raises(ConfigurationError, match=BLOB_KEY) as refused:
        FlaskRiverML(second)
    assert "river_ml" not in second.extensions
    assert "generated in this host's RIVER_ML_CACHE_DIR" in refused.value.message
    assert "the same SECRET_KEY" in refused.value.message
    # The message names no path and no key.
    assert str(tmp_path) not in refused.value.message
    assert FlaskRiverML.state(first).settings.shelve_secret_key not in refused.value.message
    # The first host goes on serving.
    with first.app_context():
        assert FlaskRiverML().models() == ["kept"]


@pytest.mark.parametrize("backend", SHARED)
def test_different_token_keys_refuse_to_start_where_tokens_are_issued(make_app, tmp_path, backend):
    common = {"RIVER_ML_SHELVE_SECRET_KEY": "one blob key", "RIVER_ML_DISABLE_AUTHENTICATION": False}
    host(make_app, tmp_path, "a", backend, RIVER_ML_JWT_SECRET_KEY="token key one", **common)
    host(make_app, tmp_path, "b", backend, RIVER_ML_JWT_SECRET_KEY="token key one", **common)
    with pytest.raises(ConfigurationError, match=TOKEN_KEY) as refused:
        host(make_app, tmp_path, "c", backend, RIVER_ML_JWT_SECRET_KEY="token key two", **common)
    assert "is set in RIVER_ML_JWT_SECRET_KEY" in refused.value.message
    # Without authentication no token is issued, so the token key is neither checked nor recorded.
    quiet = host(make_app, tmp_path, "d", backend, RIVER_ML_SHELVE_SECRET_KEY="one blob key")
    assert FlaskRiverML.state(quiet).settings.jwt_secret_key != "token key one"
    assert FlaskRiverML.state(quiet).keys.done


@pytest.mark.parametrize("backend", SHARED)
def test_hosts_sharing_secret_key_serve_the_same_models(make_app, tmp_path, backend):
    """Upload in one host, learn and predict in the other, with tokens each issued by the other."""
    config = {"SECRET_KEY": "the deployment's one secret", "RIVER_ML_DISABLE_AUTHENTICATION": False}
    first = host(make_app, tmp_path, "a", backend, **config)
    second = host(make_app, tmp_path, "b", backend, **config)
    for app in (first, second):
        settings = FlaskRiverML.state(app).settings
        assert settings.shelve_secret_key == derived_key(config["SECRET_KEY"], BLOB_KEY)
        assert settings.jwt_secret_key == derived_key(config["SECRET_KEY"], TOKEN_KEY)
        # Nothing was generated: SECRET_KEY is all the hosts share.
        assert not (Path(settings.cache_dir)).exists()
    with first.app_context():
        river_ml = FlaskRiverML()
        river_ml.add_model(regressor(), "regression", name="shared")
        api_token = river_ml.create_user("alice", PASSWORD)
    from_first, from_second = bearer(first, "alice", api_token), bearer(second, "alice", api_token)
    local = regressor()
    for i, (x, y) in enumerate(SAMPLES):
        # Each host accepts the other's token, and applies the other's learns.
        app, headers = (second, from_first) if i % 2 else (first, from_second)
        learned = app.test_client().post(
            "/api/learn/", json={"model": "shared", "features": x, "ground_truth": y}, headers=headers
        )
        assert learned.status_code == 201, learned.get_json()
        local.learn_one(x, y)
    x = SAMPLES[0][0]
    for app, headers in ((first, from_second), (second, from_first)):
        predicted = app.test_client().post("/api/predict/", json={"model": "shared", "features": x}, headers=headers)
        assert predicted.status_code in (200, 201), predicted.get_json()
        assert predicted.get_json()["prediction"] == local.predict_one(x)


def test_a_key_generated_earlier_keeps_working(make_app, tmp_path):
    """A deployment that adds SECRET_KEY later keeps its generated blob key: its models still load."""
    before = make_app(instance_path=tmp_path / "a", RIVER_ML_STORAGE_BACKEND="shelve")
    generated = FlaskRiverML.state(before).settings.shelve_secret_key
    local = regressor()
    with before.app_context():
        river_ml = FlaskRiverML()
        river_ml.add_model(regressor(), "regression", name="old")
        for x, y in SAMPLES:
            river_ml.learn("old", ground_truth=y, features=x)
            local.learn_one(x, y)
    FlaskRiverML.state(before).close()
    after = make_app(instance_path=tmp_path / "a", RIVER_ML_STORAGE_BACKEND="shelve", SECRET_KEY="added later")
    assert FlaskRiverML.state(after).settings.shelve_secret_key == generated
    with after.app_context():
        x = SAMPLES[0][0]
        assert FlaskRiverML().predict(x, "old")["prediction"] == local.predict_one(x)


def test_the_fingerprint_does_not_hold_the_key(make_app, tmp_path):
    chosen = "a key a person chose"
    app = host(
        make_app, tmp_path, "a", "shelve", RIVER_ML_SHELVE_SECRET_KEY=chosen, RIVER_ML_DISABLE_AUTHENTICATION=False
    )
    blob, token = stored(app, BLOB_KEY), stored(app, TOKEN_KEY)
    raw = FlaskRiverML.state(app).backend.get(layout.fingerprint(BLOB_KEY))
    for form in (chosen.encode(), chosen.encode().hex().encode(), base64.b64encode(chosen.encode())):
        assert form not in raw
    token_key = FlaskRiverML.state(app).settings.jwt_secret_key
    assert token_key.encode() not in FlaskRiverML.state(app).backend.get(layout.fingerprint(TOKEN_KEY))
    # A chosen key may be guessable: testing a guess costs a memory-hard scrypt of 16 MiB.
    assert blob["algorithm"] == "scrypt-16384-8-1"
    salt = bytes.fromhex(blob["salt"])
    assert len(salt) == 16
    expected = hashlib.scrypt(
        chosen.encode(), salt=b"flask-river-ml key fingerprint\x00" + salt, n=2**14, r=8, p=1, dklen=32
    ).hex()
    assert blob["fingerprint"] == expected
    # A generated key holds 256 random bits: an HMAC is enough.
    assert token["algorithm"] == "hmac-sha256"
    # Each store salts its own fingerprint: the same key fingerprints differently elsewhere.
    other = host(make_app, tmp_path / "elsewhere", "a", "shelve", RIVER_ML_SHELVE_SECRET_KEY=chosen)
    assert stored(other, BLOB_KEY)["fingerprint"] != blob["fingerprint"]
    key = resolve(BLOB_KEY, chosen, None, str(tmp_path))
    assert matches(key, blob) and not matches(resolve(BLOB_KEY, chosen + "!", None, str(tmp_path)), blob)


@pytest.mark.parametrize(
    "record",
    [b"not json", b"[1, 2]", b'{"algorithm": ["scrypt"], "salt": "00", "fingerprint": "00"}',
     b'{"algorithm": "md5", "salt": "00", "fingerprint": "00"}',
     b'{"algorithm": "hmac-sha256", "salt": "not hex", "fingerprint": "00"}'],
)  # fmt: skip
def test_a_fingerprint_flask_river_ml_did_not_write_refuses_start(make_app, tmp_path, record):
    first = host(make_app, tmp_path, "a", "shelve", RIVER_ML_SHELVE_SECRET_KEY="k")
    FlaskRiverML.state(first).backend.set(layout.fingerprint(BLOB_KEY), record)
    with pytest.raises(ConfigurationError, match="is not one flask-river-ml writes"):
        host(make_app, tmp_path, "b", "shelve", RIVER_ML_SHELVE_SECRET_KEY="k")


@pytest.mark.redis
def test_a_flushed_store_records_the_next_hosts_keys(make_app, tmp_path, redis_url, redis_prefix):
    host(make_app, tmp_path, "a", "redis", RIVER_ML_SHELVE_SECRET_KEY="old key")
    client = redis.Redis.from_url(redis_url)
    # What FLUSHALL does to this test's prefix (the shared server itself must not be flushed).
    client.delete(*client.scan_iter(match=redis_prefix + "*"))
    client.close()
    host(make_app, tmp_path, "b", "redis", RIVER_ML_SHELVE_SECRET_KEY="new key")
    with pytest.raises(ConfigurationError, match=BLOB_KEY):
        host(make_app, tmp_path, "c", "redis", RIVER_ML_SHELVE_SECRET_KEY="old key")


def test_blobs_signed_with_another_key_stay_refused_without_fingerprints(make_app, tmp_path):
    """The signature is the defence, the fingerprint only its early warning: with the record
    gone, a host with another key starts, and still loads nothing the first one stored."""
    first = host(make_app, tmp_path, "a", "shelve", RIVER_ML_SHELVE_SECRET_KEY="one")
    with first.app_context():
        FlaskRiverML().add_model(regressor(), "regression", name="m")
    FlaskRiverML.state(first).backend.delete(layout.fingerprint(BLOB_KEY))
    second = host(make_app, tmp_path, "b", "shelve", RIVER_ML_SHELVE_SECRET_KEY="two")
    with second.app_context(), pytest.raises(TamperedData):
        FlaskRiverML().predict(SAMPLES[0][0], "m")


class Interleaved(MemoryBackend):
    """A store where another host records its fingerprint between this host's read and write."""

    def __init__(self, other: Any) -> None:
        super().__init__()
        self.other = other

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if self.other is not None:
            other, self.other = self.other, None
            KeyCheck(self, [other]).run()
        return super().add(key, value, ttl)


def test_of_two_hosts_starting_together_the_second_compares_with_the_first(tmp_path):
    mine, theirs = resolve(BLOB_KEY, "mine", None, str(tmp_path)), resolve(BLOB_KEY, "theirs", None, str(tmp_path))
    with pytest.raises(KeysDiffer, match=BLOB_KEY):
        KeyCheck(Interleaved(theirs), [mine]).run()
    same = Interleaved(mine)
    check = KeyCheck(same, [mine])
    check.run()
    assert check.done and matches(mine, json.loads(same.get(layout.fingerprint(BLOB_KEY)) or b""))


# --- a store that is down at start ---------------------------------------------------------------


@pytest.fixture
def outage(monkeypatch) -> dict[str, bool]:
    """``outage["down"] = True`` makes the shelve store fail as backends do when their store cannot
    be reached: with StoreUnavailable."""
    state = {"down": False}
    for name in ("get", "add"):
        original = getattr(ShelveBackend, name)

        def failing(self, *args, _original=original, **kwargs):
            if state["down"]:
                raise StoreUnavailable("The shelve store cannot be reached.")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ShelveBackend, name, failing)
    return state


def test_a_host_starts_while_its_store_is_down_and_checks_once_it_is_back(make_app, tmp_path, outage, caplog):
    outage["down"] = True
    with caplog.at_level(logging.WARNING, logger="flask_river_ml"):
        app = host(make_app, tmp_path, "a", "shelve", RIVER_ML_SHELVE_SECRET_KEY="k")
    assert "checked once it is back" in caplog.text
    client = app.test_client()
    for path in ("/api/models/", "/api/"):
        down = client.get(path)
        assert down.status_code == 503 and down.headers["Retry-After"], down.data
        assert "cannot be reached" in down.get_json()["message"]
    with app.app_context(), pytest.raises(StoreUnavailable):
        FlaskRiverML().models()
    outage["down"] = False
    assert client.get("/api/models/").get_json() == {"models": []}
    assert FlaskRiverML.state(app).keys.done
    assert matches(resolve(BLOB_KEY, "k", None, str(tmp_path)), stored(app, BLOB_KEY))


def test_a_host_that_started_during_an_outage_with_another_key_refuses_to_serve(make_app, tmp_path, outage, caplog):
    outage["down"] = True
    late = host(make_app, tmp_path, "late", "shelve", RIVER_ML_SHELVE_SECRET_KEY="another key")
    outage["down"] = False
    first = host(make_app, tmp_path, "a", "shelve", RIVER_ML_SHELVE_SECRET_KEY="the key")
    with first.app_context():
        FlaskRiverML().add_model(regressor(), "regression", name="m")
    client = late.test_client()
    for _ in range(2):
        refused = client.post("/api/predict/", json={"model": "m", "features": SAMPLES[0][0]})
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert BLOB_KEY in refused.get_json()["message"]
    with late.app_context(), pytest.raises(ConfigurationError, match=BLOB_KEY):
        FlaskRiverML().models()
    # No start-up error told the operator: the log does, once.
    logged = [record for record in caplog.records if record.levelno == logging.ERROR and BLOB_KEY in record.message]
    assert len(logged) == 1, caplog.text
    # Nothing of the late host reached the store: the first host's key is still the recorded one.
    assert matches(resolve(BLOB_KEY, "the key", None, str(tmp_path)), stored(first, BLOB_KEY))
    # Known to be wrong, the late host never claims the store, not even once the record is gone.
    FlaskRiverML.state(first).backend.delete(layout.fingerprint(BLOB_KEY))
    assert client.get("/api/models/").status_code == 503
    assert FlaskRiverML.state(first).backend.get(layout.fingerprint(BLOB_KEY)) is None


# --- real servers ---------------------------------------------------------------------------------


def redis_env(url: str, prefix: str, **settings: str) -> dict[str, str]:
    env = {
        "FLASK_RIVER_ML_STORAGE_BACKEND": "redis",
        "FLASK_RIVER_ML_REDIS_URL": url,
        "FLASK_RIVER_ML_REDIS_PREFIX": prefix,
    }
    return {**env, **settings}


@pytest.mark.gunicorn
@pytest.mark.redis
def test_a_second_gunicorn_host_with_other_keys_fails_to_start(tmp_path, redis_url, redis_prefix):
    env = redis_env(redis_url, redis_prefix)
    with serve(tmp_path / "a", env=env, workers=1, threads=2) as first:
        folder = tmp_path / "b"
        folder.mkdir()
        log = folder / "gunicorn.log"
        command = [str(GUNICORN), "--bind", f"127.0.0.1:{free_port()}", "--workers", "1", APP]
        with open(log, "wb") as output:
            second = subprocess.run(
                command, cwd=ROOT, env=server_env(folder, env), stdout=output, stderr=subprocess.STDOUT, timeout=120
            )
        text = log.read_text()
        assert second.returncode != 0, text
        assert "KeysDiffer" in text and f"This host's {BLOB_KEY} is not the key" in text, text
        # The host that was there first is untouched.
        assert requests.get(f"{first.url}/api/models/", timeout=10).json() == {"models": []}


@pytest.mark.gunicorn
@pytest.mark.redis
def test_gunicorn_hosts_sharing_secret_key_serve_the_same_models(tmp_path, redis_url, redis_prefix):
    env = redis_env(redis_url, redis_prefix, FLASK_SECRET_KEY="one secret for the deployment")
    with (
        serve(tmp_path / "a", env=env, workers=1, threads=2) as first,
        serve(tmp_path / "b", env=env, workers=1, threads=2) as second,
    ):
        uploaded = requests.post(f"{first.url}/api/model/regression/shared/", data=dill.dumps(regressor()), timeout=30)
        assert uploaded.status_code == 201, uploaded.text
        local = regressor()
        for i, (x, y) in enumerate(SAMPLES):
            url = (first, second)[i % 2].url
            learned = requests.post(
                f"{url}/api/learn/", json={"model": "shared", "features": x, "ground_truth": y}, timeout=30
            )
            assert learned.status_code == 201, learned.text
            local.learn_one(x, y)
        x = SAMPLES[0][0]
        for server in (first, second):
            predicted = requests.post(f"{server.url}/api/predict/", json={"model": "shared", "features": x}, timeout=30)
            assert predicted.status_code in (200, 201), predicted.text
            assert predicted.json()["prediction"] == local.predict_one(x)
        for folder in ("a", "b"):
            assert not (tmp_path / folder / "instance" / "cache" / "shelve_secret_key").exists()


@pytest.mark.redis
def test_a_host_starts_while_redis_is_down_and_checks_once_it_is_back(tmp_path):
    from redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        server.stop()
        app = Flask("redis_down_at_start", instance_path=str(tmp_path / "a"))
        app.config.update(
            RIVER_ML_STORAGE_BACKEND="redis", RIVER_ML_REDIS_URL=server.url, RIVER_ML_SHELVE_SECRET_KEY="k"
        )
        FlaskRiverML(app)
        try:
            down = app.test_client().get("/api/models/")
            assert down.status_code == 503 and down.headers["Retry-After"], down.data
            assert not FlaskRiverML.state(app).keys.done
            server.start()
            assert app.test_client().get("/api/models/").get_json() == {"models": []}
            assert FlaskRiverML.state(app).keys.done
            assert matches(resolve(BLOB_KEY, "k", None, str(tmp_path)), stored(app, BLOB_KEY))
        finally:
            FlaskRiverML.state(app).close()

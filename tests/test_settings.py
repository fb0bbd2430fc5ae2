"""Registration and settings."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from flask import Flask
from river import linear_model

from flask_river_ml import ConfigurationError, FlaskRiverML
from flask_river_ml.settings import KNOWN, PREFIX, SETTINGS, Settings, load


def new_app(tmp_path, **config) -> Flask:
    app = Flask("settings_app", instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


def test_defaults_are_filled_in(tmp_path):
    app = new_app(tmp_path)
    FlaskRiverML(app)
    config = app.config
    assert config["RIVER_ML_URL_PREFIX"] == "api"
    assert config["RIVER_ML_STORAGE_BACKEND"] == "shelve"
    assert config["RIVER_ML_GENERATE_IDENTIFIERS"] is True
    assert config["RIVER_ML_IDENTIFIER_EXPIRES_SECONDS"] == 604800
    assert config["RIVER_ML_DISABLE_AUTHENTICATION"] is True
    assert config["RIVER_ML_VIEW_RATE_LIMIT"] == "10000/1day"
    assert config["RIVER_ML_VIEW_RATE_LIMIT_DISABLE"] is True
    assert config["RIVER_ML_REDIS_PORT"] == 6379 and config["RIVER_ML_REDIS_DB"] == 0
    assert config["RIVER_ML_UPLOAD_MAX_BYTES"] == 256 * 1024 * 1024
    assert "learn" in config["RIVER_ML_AUTHENTICATED_VIEWS"]
    assert "service_info" not in config["RIVER_ML_AUTHENTICATED_VIEWS"]
    assert "auth_token" not in config["RIVER_ML_AUTHENTICATED_VIEWS"]
    settings = FlaskRiverML.state(app).settings
    # The store lives in the instance folder, never in the package's folder.
    assert settings.app_dir == app.instance_path
    assert settings.shelve_path == os.path.join(app.instance_path, "river_ml.shelve")
    assert os.path.exists(settings.shelve_path + ".sqlite3")
    assert settings.cache_dir == os.path.join(app.instance_path, "cache")


def test_settings_are_one_frozen_object(tmp_path):
    """The registration keeps a frozen Settings: typed attributes, lists as tuples, while
    app.config keeps the values as given."""
    app = new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_API_VIEWS_ENABLED=["learn", "predict"])
    FlaskRiverML(app)
    settings = FlaskRiverML.state(app).settings
    assert isinstance(settings, Settings)
    assert settings.api_views_enabled == ("learn", "predict")
    assert app.config["RIVER_ML_API_VIEWS_ENABLED"] == ["learn", "predict"]
    assert settings.max_features == 1000 and settings.redis_port == 6379
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_features = 5  # type: ignore[misc]
    assert settings.store_url == "memory://"


@pytest.mark.parametrize(
    "config, url",
    [
        ({"RIVER_ML_STORAGE_BACKEND": "memory"}, "memory://"),
        ({"RIVER_ML_STORAGE_BACKEND": "redis"}, "redis://localhost:6379/0"),
        (
            {"RIVER_ML_STORAGE_BACKEND": "redis", "RIVER_ML_REDIS_HOST": "db", "RIVER_ML_REDIS_DB": 3},
            "redis://db:6379/3",
        ),
        ({"RIVER_ML_STORAGE_BACKEND": "redis", "RIVER_ML_REDIS_URL": "unix:///run/r.sock"}, "unix:///run/r.sock"),
        ({"RIVER_ML_STORAGE_BACKEND": "redis", "RIVER_ML_STORAGE_URL": "memory://"}, "memory://"),
        ({"RIVER_ML_STORAGE_URL": "rediss://cache:6380/1"}, "rediss://cache:6380/1"),
    ],
)
def test_the_store_url_is_the_setting_or_what_the_backend_settings_name(tmp_path, config, url):
    app = new_app(tmp_path, **config)
    assert load(app).store_url == url


def test_the_shelve_backend_is_an_sqlite_url_of_its_path(tmp_path):
    app = new_app(tmp_path)
    assert load(app).store_url == "sqlite:///" + os.path.join(app.instance_path, "river_ml.shelve")


@pytest.mark.parametrize("url", ["postgres://db/models", "models.sqlite3", "", 5])
def test_a_storage_url_of_no_backend_refuses_to_start(tmp_path, url):
    with pytest.raises(ConfigurationError, match="RIVER_ML_STORAGE_URL"):
        FlaskRiverML(new_app(tmp_path, RIVER_ML_STORAGE_URL=url))


def test_settings_are_read_once(tmp_path):
    """Changing app.config after init_app changes nothing served: the 404 names the prefix the
    routes were registered under."""
    app = new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_URL_PREFIX="ml")
    FlaskRiverML(app)
    app.config["RIVER_ML_URL_PREFIX"] = "other"
    response = app.test_client().get("/ml/nothing/")
    assert response.status_code == 404
    assert response.get_json()["message"].endswith("the service's root is /ml/.")


def test_every_setting_is_documented():
    """docs/settings.md lists every key of Settings, and no other."""
    table = (Path(__file__).parents[1] / "docs" / "settings.md").read_text()
    documented = set()
    for key, suffixes in re.findall(r"^\| (RIVER_ML_\w+)((?: / _\w+)*) \|", table, re.MULTILINE):
        documented.add(key)
        stem = key.rsplit("_", 1)[0]
        documented |= {stem + suffix for suffix in re.findall(r"_\w+", suffixes)}
    assert documented == {PREFIX + name for name in SETTINGS}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("RIVER_ML_STORAGE_BACKEND", "mongodb"),
        ("RIVER_ML_URL_PREFIX", 5),
        ("RIVER_ML_GENERATE_IDENTIFIERS", "maybe"),
        ("RIVER_ML_IDENTIFIER_EXPIRES_SECONDS", 0),
        ("RIVER_ML_REDIS_PORT", "http"),
        ("RIVER_ML_UPLOAD_MAX_BYTES", 1.5),
        ("RIVER_ML_API_VIEWS_ENABLED", ["learn", "fly"]),
        ("RIVER_ML_AUTHENTICATED_VIEWS", "learn"),
        ("RIVER_ML_UNPICKLE_ALLOWED_MODULES", [3]),
        ("RIVER_ML_SNAPSHOT_EVERY", -1),
        ("RIVER_ML_BATCH_MAX_SAMPLES", 0),
        ("RIVER_ML_SHELVE_SECRET_KEY", 123),
        ("RIVER_ML_SHELVE_SECRET_KEY", ""),
        ("RIVER_ML_JWT_SECRET_KEY", ""),
    ],
)
def test_bad_values_fail_at_start_naming_the_key(tmp_path, key, value):
    app = new_app(tmp_path, **{key: value})
    with pytest.raises(ConfigurationError, match=key):
        FlaskRiverML(app)
    assert "river_ml" not in app.extensions


def test_environment_style_values_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASK_RIVER_ML_STORAGE_BACKEND", "memory")
    monkeypatch.setenv("FLASK_RIVER_ML_GENERATE_IDENTIFIERS", "false")
    app = new_app(tmp_path, RIVER_ML_REDIS_PORT="6380", RIVER_ML_DISABLE_AUTHENTICATION="False")
    app.config.from_prefixed_env()
    FlaskRiverML(app)
    settings = FlaskRiverML.state(app).settings
    assert settings.storage_backend == "memory"
    assert settings.generate_identifiers is False
    assert settings.redis_port == 6380
    assert settings.disable_authentication is False


def test_options_are_defaults(tmp_path):
    app = new_app(tmp_path, RIVER_ML_URL_PREFIX="ml")
    FlaskRiverML(app, storage_backend="memory", url_prefix="ignored")
    assert app.config["RIVER_ML_STORAGE_BACKEND"] == "memory"
    assert app.config["RIVER_ML_URL_PREFIX"] == "ml"
    with pytest.raises(ConfigurationError, match="colour"):
        FlaskRiverML(colour="blue")


def test_second_registration_raises(tmp_path):
    app = new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory")
    extension = FlaskRiverML(app)
    with pytest.raises(RuntimeError, match="already registered"):
        extension.init_app(app)


def test_one_extension_serves_several_apps(tmp_path):
    river_ml = FlaskRiverML()
    first = Flask("first", instance_path=str(tmp_path / "one"))
    second = Flask("second", instance_path=str(tmp_path / "two"))
    river_ml.init_app(first)
    river_ml.init_app(second)
    with first.app_context():
        river_ml.add_model(linear_model.LinearRegression(), "regression", name="only-here")
    with second.app_context():
        assert river_ml.models() == []
    with first.app_context():
        assert river_ml.models() == ["only-here"]
    assert not hasattr(river_ml, "app")


def test_unregistered_app_is_a_clear_error(tmp_path):
    app = new_app(tmp_path)
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        FlaskRiverML().models()


def test_generated_secret_is_kept_and_shared(tmp_path):
    """Every process on the same folder signs with the same generated key."""
    first = new_app(tmp_path)
    FlaskRiverML(first)
    second = new_app(tmp_path)
    FlaskRiverML(second)
    key = FlaskRiverML.state(first).settings.shelve_secret_key
    assert len(key) >= 32
    assert FlaskRiverML.state(second).settings.shelve_secret_key == key
    cache = FlaskRiverML.state(first).settings.cache_dir
    assert sorted(os.listdir(cache)) == ["jwt_secret_key", "shelve_secret_key"]
    assert oct(os.stat(os.path.join(cache, "shelve_secret_key")).st_mode & 0o777) == "0o600"


def test_a_different_secret_refuses_the_store(tmp_path):
    """A second app on the same store with another key refuses to start, naming the setting."""
    first = new_app(tmp_path, RIVER_ML_SHELVE_SECRET_KEY="one")
    FlaskRiverML(first)
    with first.app_context():
        FlaskRiverML().add_model(linear_model.LinearRegression(), "regression", name="m")
    second = new_app(tmp_path, RIVER_ML_SHELVE_SECRET_KEY="two")
    with pytest.raises(ConfigurationError, match="RIVER_ML_SHELVE_SECRET_KEY"):
        FlaskRiverML(second)
    assert "river_ml" not in second.extensions


def test_a_misspelt_key_fails_at_start_with_the_setting_it_meant(tmp_path):
    app = new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_STORAGE_BAKCEND="redis")
    with pytest.raises(ConfigurationError) as raised:
        FlaskRiverML(app)
    assert str(raised.value) == "Unknown setting RIVER_ML_STORAGE_BAKCEND; did you mean RIVER_ML_STORAGE_BACKEND?"
    assert "river_ml" not in app.extensions


def test_a_key_like_no_setting_fails_naming_it(tmp_path):
    app = new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_WIDGETS=3)
    with pytest.raises(ConfigurationError, match=r"^Unknown setting RIVER_ML_WIDGETS; .*docs/settings\.md\.$"):
        FlaskRiverML(app)


def test_every_unknown_key_is_named_at_once(tmp_path, monkeypatch):
    """Environment overrides are checked too; the typos come in the order of their names."""
    monkeypatch.setenv("FLASK_RIVER_ML_SNAPSHOTS_EVERY", "10")
    app = new_app(tmp_path, RIVER_ML_URLPREFIX="ml")
    app.config.from_prefixed_env()
    with pytest.raises(ConfigurationError) as raised:
        FlaskRiverML(app)
    assert str(raised.value) == (
        "Unknown setting RIVER_ML_SNAPSHOTS_EVERY; did you mean RIVER_ML_SNAPSHOT_EVERY? "
        "Unknown setting RIVER_ML_URLPREFIX; did you mean RIVER_ML_URL_PREFIX?"
    )


@pytest.mark.parametrize("name", ["AUTHENTICATION_SERVER", "SESSION_EXPIRES_SECONDS"])
def test_django_settings_it_never_read_are_accepted(tmp_path, name):
    FlaskRiverML(new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory", **{"RIVER_ML_" + name: "x"}))


def test_the_django_name_of_the_token_key_signs_tokens(tmp_path):
    """RIVER_ML_JWT_SERVER_SECRET, django-river-ml's name, sets RIVER_ML_JWT_SECRET_KEY."""
    secret = "a-secret-of-the-django-configuration"
    django = new_app(tmp_path / "django", RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_JWT_SERVER_SECRET=secret)
    FlaskRiverML(django)
    assert FlaskRiverML.state(django).settings.jwt_secret_key == secret
    ours = new_app(tmp_path / "ours", RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_JWT_SECRET_KEY=secret)
    FlaskRiverML(ours)
    assert FlaskRiverML.state(ours).settings.jwt_secret_key == secret


def test_the_two_names_of_the_token_key_may_not_disagree(tmp_path):
    app = new_app(tmp_path, RIVER_ML_JWT_SERVER_SECRET="one-secret", RIVER_ML_JWT_SECRET_KEY="another-secret")
    with pytest.raises(ConfigurationError, match="RIVER_ML_JWT_SERVER_SECRET and RIVER_ML_JWT_SECRET_KEY"):
        FlaskRiverML(app)


def test_other_keys_of_the_config_are_left_alone(tmp_path):
    app = new_app(tmp_path, RIVER_ML_STORAGE_BACKEND="memory", RIVER_MLX=1, MY_RIVER_ML_THING=2)
    app.config[3] = "not a string key"
    FlaskRiverML(app)


def test_a_misspelt_option_is_told_its_setting():
    with pytest.raises(
        ConfigurationError, match="^Unknown flask-river-ml option storage_backned; did you mean storage_backend"
    ):
        FlaskRiverML(storage_backned="memory")


#: RIVER_ML_* names that are environment variables, not server settings: the riverapi
#: client's, and the test suite's external redis.
_CLIENT_VARIABLES = {"RIVER_ML_USER", "RIVER_ML_TOKEN", "RIVER_ML_SERVER", "RIVER_ML_TEST_REDIS_URL"}


def test_every_key_the_project_mentions_is_a_setting(tmp_path):
    """Every RIVER_ML_* key written in the docs, the examples, the benchmarks, the package and
    the tests (but the misspellings of this file, and those the error messages quoted name) is
    a setting, so none of them is refused; set all at once, to their defaults, they start an app."""
    root = Path(__file__).parents[1]
    files = [root / "README.md", root / "Makefile", *root.glob("docs/*.md")]
    for folder in ("flask_river_ml", "examples", "bench", "tests"):
        files += [path for path in (root / folder).rglob("*") if path.suffix in (".py", ".md", ".html", ".js")]
    mentioned = set()
    for path in files:
        if path.exists() and path != Path(__file__):
            # An error message quoted in the docs names a misspelling on purpose.
            mentioned |= set(re.findall(r"(?<!Unknown setting )RIVER_ML_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert "RIVER_ML_STORAGE_URL" in mentioned and "RIVER_ML_JSON_MAX_BYTES" in mentioned
    assert mentioned - _CLIENT_VARIABLES <= {PREFIX + name for name in KNOWN}
    defaults = {PREFIX + name: default for name, (default, _) in SETTINGS.items()}
    app = new_app(tmp_path, **{**defaults, "RIVER_ML_STORAGE_BACKEND": "memory"})
    FlaskRiverML(app)

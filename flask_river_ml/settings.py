"""Every ``RIVER_ML_*`` setting: its default, its type and its validation.

``load(app)`` fills in the defaults with ``app.config.setdefault``, so the values in force can
be read back from ``app.config``, and raises :class:`ConfigurationError` naming the key of the
first bad value, or every ``RIVER_ML_*`` key that is no setting, at start-up rather than at the
first request. What it returns, a frozen :class:`Settings`, is what the extension reads from
then on: typed attributes, which mypy checks, rather than string keys, which only a request
would.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from flask import Flask

from .errors import ConfigurationError
from .storage import BACKENDS, scheme

PREFIX = "RIVER_ML_"
#: Where an app keeps its registration: ``app.extensions["river_ml"]``.
EXTENSION_KEY = "river_ml"

#: Every view of the blueprint, by the name used in API_VIEWS_ENABLED and AUTHENTICATED_VIEWS.
VIEWS = (
    "service_info",
    "auth_token",
    "model",
    "model_download",
    "models",
    "learn",
    "predict",
    "label",
    "learn_batch",
    "predict_batch",
    "metrics",
    "stats",
    "stream_metrics",
    "stream_events",
    "dashboard",
)
_PUBLIC_VIEWS = ("service_info", "auth_token")
#: The values of RIVER_ML_UPLOAD_PICKLES.
UPLOAD_PICKLES = ("loopback", "any")

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _boolean(value: Any) -> bool:
    # Environment overrides arrive as strings when they are not JSON (Django read "true" too).
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError("must be true or false")


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _secret(value: Any) -> str:
    # An empty key signs nothing: an empty environment variable is a mistake, not a choice.
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _rate(value: Any) -> str:
    from .limits import limit_string

    if not isinstance(value, str):
        raise ValueError("must be a rate such as '100/1day', '5/m' or '100 per day'")
    try:
        return limit_string(value)
    except ValueError:
        raise ValueError("must be a rate such as '100/1day', '5/m' or '100 per day'") from None


def _storage_url(value: Any) -> str:
    url = _text(value)
    scheme(url)
    return url


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _path(value: Any) -> str:
    if not isinstance(value, str | os.PathLike):
        raise ValueError("must be a path")
    return os.fspath(value)


def _names(allowed: tuple[str, ...] | None = None) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("must be a list of names")
        names = tuple(value)
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"must be a list of names, not contain {name!r}")
            if allowed is not None and name not in allowed:
                raise ValueError(f"names an unknown view {name!r}; the views are {', '.join(allowed)}")
        return names

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return check


def _setting(default: Any, check: Callable[[Any], Any]) -> Any:
    """A field of :class:`Settings`: the default ``load`` writes into ``app.config`` and the
    check that turns the configured value into the attribute (or raises ValueError)."""
    return field(metadata={"default": default, "check": check})


@dataclass(frozen=True)
class Settings:
    """The validated settings of one app, built once by :func:`load` when it is registered.

    One attribute per ``RIVER_ML_*`` key, named after the key without its prefix in lower case
    (RIVER_ML_MAX_FEATURES is ``max_features``). Frozen, and lists are tuples: changing
    ``app.config`` after ``init_app`` changes nothing served, and no request can change what
    the next one sees. A default of None for a path means "derived" (see :func:`load`), for a
    secret key "found" (see :mod:`flask_river_ml.keys`).
    """

    url_prefix: str = _setting("api", _text)
    app_dir: str = _setting(None, _optional(_path))
    cache_dir: str = _setting(None, _optional(_path))
    storage_backend: str = _setting("shelve", _one_of(BACKENDS))
    # New: the store as a URL (memory://, sqlite:///path, redis://...): wins over the backend's
    # name and its settings.
    storage_url: str | None = _setting(None, _optional(_storage_url))
    shelve_path: str = _setting(None, _optional(_path))
    shelve_secret_key: str | None = _setting(None, _optional(_secret))
    redis_url: str | None = _setting(None, _optional(_text))
    redis_host: str = _setting("localhost", _text)
    redis_port: int = _setting(6379, _integer(1))
    redis_db: int = _setting(0, _integer(0))
    # New: every redis key of the extension starts with this, so it can share a database.
    redis_prefix: str = _setting("river_ml:", _text)
    generate_identifiers: bool = _setting(True, _boolean)
    identifier_expires_seconds: int = _setting(604800, _integer(1))
    disable_authentication: bool = _setting(True, _boolean)
    authenticated_views: tuple[str, ...] = _setting([v for v in VIEWS if v not in _PUBLIC_VIEWS], _names(VIEWS))
    jwt_secret_key: str | None = _setting(None, _optional(_secret))
    token_expires_seconds: int = _setting(600, _integer(1))
    domain_url: str | None = _setting(None, _optional(_text))
    view_rate_limit: str = _setting("10000/1day", _rate)
    view_rate_limit_block: bool = _setting(True, _boolean)
    view_rate_limit_disable: bool = _setting(True, _boolean)
    api_views_enabled: tuple[str, ...] = _setting([], _names(VIEWS))
    upload_max_bytes: int = _setting(256 * 1024 * 1024, _integer(1))
    # New: every other body (a learn, a predict, a model's JSON description) is refused with
    # 413 over this: a JSON value takes many times its size in memory once parsed.
    json_max_bytes: int = _setting(1024 * 1024, _integer(1))
    # New: the most features one sample may have (learn, predict, a stored prediction): some
    # models' cost per sample grows with their square or faster.
    max_features: int = _setting(1000, _integer(1))
    # New: the most samples one batch may hold (learn_batch, predict_batch): a batch holds its
    # model's lock while it is learnt, and every process learns its record in one go.
    batch_max_samples: int = _setting(1000, _integer(1))
    unpickle_allowed_modules: tuple[str, ...] = _setting([], _names())
    # New: who may upload a pickle while authentication is off: "loopback" clients only, or
    # "any" client (a closed network). With authentication on, users with the manage scope.
    upload_pickles: str = _setting("loopback", _one_of(UPLOAD_PICKLES))
    # New: a model's log is folded into a snapshot every this many learn and label records.
    snapshot_every: int = _setting(1000, _integer(1))
    # New: an idle stream sends a comment this often, which also notices closed clients.
    stream_keepalive_seconds: int = _setting(15, _integer(1))

    def protects(self, view: str) -> bool:
        """Whether ``view`` (a name of :data:`VIEWS`) needs an access token."""
        return not self.disable_authentication and view in self.authenticated_views

    @property
    def store_url(self) -> str:
        """The URL of the store: ``RIVER_ML_STORAGE_URL``, else the one that
        ``RIVER_ML_STORAGE_BACKEND`` and its own settings name."""
        if self.storage_url:
            return self.storage_url
        if self.storage_backend == "memory":
            return "memory://"
        if self.storage_backend == "shelve":
            return "sqlite:///" + os.path.abspath(self.shelve_path)
        return self.redis_url or f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"


#: key without the prefix -> (default, check), in the order of :class:`Settings`.
SETTINGS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    setting.name.upper(): (setting.metadata["default"], setting.metadata["check"]) for setting in fields(Settings)
}


#: django-river-ml's name of a setting that has another here: the same key, under either name.
_DJANGO_NAMES = {"JWT_SERVER_SECRET": "JWT_SECRET_KEY"}
#: django-river-ml settings that it defines but never reads: accepted, and nothing reads them
#: here either, so a Django configuration carries over as it is.
_DJANGO_UNREAD = ("AUTHENTICATION_SERVER", "SESSION_EXPIRES_SECONDS")
#: Every name (without the prefix) a ``RIVER_ML_*`` key may have.
KNOWN = frozenset((*SETTINGS, *_DJANGO_NAMES, *_DJANGO_UNREAD))


def closest_setting(name: str) -> str | None:
    """The setting (without the prefix) that ``name``, which is none, most likely misspells."""
    # Compared without the prefix, which every key shares: with it, any short name would look
    # close to some setting.
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    return close[0] if close else None


def unknown_setting(key: str) -> str:
    """What to tell of ``key``, a ``RIVER_ML_*`` key that is no setting."""
    name = key[len(PREFIX) :]
    close = closest_setting(name)
    if close:
        return f"Unknown setting {key}; did you mean {PREFIX + close}?"
    return f"Unknown setting {key}; flask-river-ml's settings are listed in its docs/settings.md."


def _check_known(app: Flask) -> None:
    """Refuse every ``RIVER_ML_*`` key of ``app.config`` that is no setting: a misspelt key
    would otherwise be ignored, and the setting it meant silently keep its default."""
    unknown = sorted(
        key for key in app.config if isinstance(key, str) and key.startswith(PREFIX) and key[len(PREFIX) :] not in KNOWN
    )
    if unknown:
        raise ConfigurationError(" ".join(unknown_setting(key) for key in unknown))


def _take_django_names(app: Flask) -> None:
    """Move a setting given under django-river-ml's name to its key here; the two may not
    disagree."""
    for django, name in _DJANGO_NAMES.items():
        if PREFIX + django not in app.config:
            continue
        value, ours = app.config[PREFIX + django], app.config.get(PREFIX + name)
        if ours is not None and ours != value:
            raise ConfigurationError(
                f"{PREFIX + django} and {PREFIX + name} are two names of one setting and disagree; keep one."
            )
        app.config[PREFIX + name] = value


def load(app: Flask) -> Settings:
    """The validated settings of ``app``, its defaults written into ``app.config``.

    Derived folders and paths are filled in too; the two secret keys stay None when they are not
    set (:mod:`flask_river_ml.keys` finds them then). Raises :class:`ConfigurationError` naming
    the key of a bad value, or every ``RIVER_ML_*`` key that is no setting.
    """
    _check_known(app)
    _take_django_names(app)
    values: dict[str, Any] = {}
    for name, (default, check) in SETTINGS.items():
        key = PREFIX + name
        # Lists are copied so that one app changing its list does not change the defaults.
        app.config.setdefault(key, list(default) if isinstance(default, list) else default)
        try:
            values[name.lower()] = check(app.config[key])
        except ValueError as error:
            raise ConfigurationError(f"{key} {error} (got {app.config[key]!r}).") from None

    app_dir = values["app_dir"] or app.instance_path
    values["app_dir"] = app_dir
    values["cache_dir"] = values["cache_dir"] or os.path.join(app_dir, "cache")
    values["shelve_path"] = values["shelve_path"] or os.path.join(app_dir, "river_ml.shelve")
    return Settings(**values)

"""Every ``RIVER_ML_*`` setting: its default, its type and its validation.

``load(app)`` fills in the defaults with ``app.config.setdefault``, so the values in force can
be read back from ``app.config``, and raises :class:`ConfigurationError` naming the key of the
first bad value, at start-up rather than at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Flask

from .errors import ConfigurationError
from .storage import BACKENDS

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


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _path(value: Any) -> str:
    if not isinstance(value, str | os.PathLike):
        raise ValueError("must be a path")
    return os.fspath(value)


def _names(allowed: tuple[str, ...] | None = None) -> Callable[[Any], list[str]]:
    def check(value: Any) -> list[str]:
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("must be a list of names")
        names = list(value)
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


#: key (without the prefix) -> (default, check). A default of None for a path means "derived"
#: (see load), for a secret key "found" (see flask_river_ml.keys).
SETTINGS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "URL_PREFIX": ("api", _text),
    "APP_DIR": (None, _optional(_path)),
    "CACHE_DIR": (None, _optional(_path)),
    "STORAGE_BACKEND": ("shelve", _one_of(BACKENDS)),
    "SHELVE_PATH": (None, _optional(_path)),
    "SHELVE_SECRET_KEY": (None, _optional(_secret)),
    "REDIS_URL": (None, _optional(_text)),
    "REDIS_HOST": ("localhost", _text),
    "REDIS_PORT": (6379, _integer(1)),
    "REDIS_DB": (0, _integer(0)),
    # New: every redis key of the extension starts with this, so it can share a database.
    "REDIS_PREFIX": ("river_ml:", _text),
    "GENERATE_IDENTIFIERS": (True, _boolean),
    "IDENTIFIER_EXPIRES_SECONDS": (604800, _integer(1)),
    "DISABLE_AUTHENTICATION": (True, _boolean),
    "AUTHENTICATED_VIEWS": ([v for v in VIEWS if v not in _PUBLIC_VIEWS], _names(VIEWS)),
    "JWT_SECRET_KEY": (None, _optional(_secret)),
    "TOKEN_EXPIRES_SECONDS": (600, _integer(1)),
    "DOMAIN_URL": (None, _optional(_text)),
    "VIEW_RATE_LIMIT": ("10000/1day", _rate),
    "VIEW_RATE_LIMIT_BLOCK": (True, _boolean),
    "VIEW_RATE_LIMIT_DISABLE": (True, _boolean),
    "API_VIEWS_ENABLED": ([], _names(VIEWS)),
    "UPLOAD_MAX_BYTES": (256 * 1024 * 1024, _integer(1)),
    # New: every other body (a learn, a predict, a model's JSON description) is refused with
    # 413 over this: a JSON value takes many times its size in memory once parsed.
    "JSON_MAX_BYTES": (1024 * 1024, _integer(1)),
    # New: the most features one sample may have (learn, predict, a stored prediction): some
    # models' cost per sample grows with their square or faster.
    "MAX_FEATURES": (1000, _integer(1)),
    "UNPICKLE_ALLOWED_MODULES": ([], _names()),
    # New: who may upload a pickle while authentication is off: "loopback" clients only, or
    # "any" client (a closed network). With authentication on, users with the manage scope.
    "UPLOAD_PICKLES": ("loopback", _one_of(UPLOAD_PICKLES)),
    # New: a model's log is folded into a snapshot every this many learn and label records.
    "SNAPSHOT_EVERY": (1000, _integer(1)),
    # New: an idle stream sends a comment this often, which also notices closed clients.
    "STREAM_KEEPALIVE_SECONDS": (15, _integer(1)),
}


def load(app: Flask) -> dict[str, Any]:
    """The validated settings of ``app``, keyed with the ``RIVER_ML_`` prefix.

    Derived folders and paths are filled in too; the two secret keys stay None when they are not
    set (:mod:`flask_river_ml.keys` finds them then). Raises :class:`ConfigurationError` naming
    the key of a bad value.
    """
    values: dict[str, Any] = {}
    for name, (default, check) in SETTINGS.items():
        key = PREFIX + name
        # Lists are copied so that one app changing its list does not change the defaults.
        app.config.setdefault(key, list(default) if isinstance(default, list) else default)
        try:
            values[key] = check(app.config[key])
        except ValueError as error:
            raise ConfigurationError(f"{key} {error} (got {app.config[key]!r}).") from None

    app_dir = values["RIVER_ML_APP_DIR"] or app.instance_path
    values["RIVER_ML_APP_DIR"] = app_dir
    values["RIVER_ML_CACHE_DIR"] = values["RIVER_ML_CACHE_DIR"] or os.path.join(app_dir, "cache")
    values["RIVER_ML_SHELVE_PATH"] = values["RIVER_ML_SHELVE_PATH"] or os.path.join(app_dir, "river_ml.shelve")
    return values

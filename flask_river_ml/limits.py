"""Rate limiting of the blueprint with flask-limiter.

One limit, RIVER_ML_VIEW_RATE_LIMIT, shared by every view of the extension and counted per
client: per user when the request carries a valid access token, per address otherwise (behind
a proxy, wrap the app in werkzeug's ``ProxyFix`` so the address is the client's). The host
app's own routes are never limited by it. With RIVER_ML_VIEW_RATE_LIMIT_BLOCK False, requests
are counted and the ``X-RateLimit-*`` headers tell where a client stands, but none is refused.

With the redis backend the counters live in the same redis. When it cannot be reached, each
process counts in its own memory meanwhile (flask-limiter's in-memory fallback) and goes back
to redis once it answers again: an outage neither lifts the limit nor answers 500, and a
request that gets through finds the store's own 503. Swallowing the limiter's errors instead
would leave every request unlimited and waiting on the dead redis twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask
from flask_limiter import Limiter
from limits import parse_many

from .storage import scheme

if TYPE_CHECKING:  # settings imports limit_string from here
    from .settings import Settings

_DJANGO_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])[a-z]*\s*$", re.IGNORECASE)
_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_SCOPE = "river_ml"
#: How long a request waits for redis to count it before it is counted in memory instead.
_COUNTER_SECONDS = 0.5


def limit_string(rate: str) -> str:
    """A rate in django-ratelimit's form (``100/1day``, ``5/m``) or flask-limiter's
    (``100 per day``) as a flask-limiter string; ValueError when it is neither."""
    match = _DJANGO_RATE.match(rate)
    if match:
        count, period, unit = match.groups()
        return f"{count} per {period or 1} {_UNITS[unit.lower()]}"
    parse_many(rate)
    return rate


def storage_uri(settings: Settings) -> str:
    """Where the counters live: the models' redis when they are stored in redis, so the limit
    holds across processes and hosts; this process's memory with any other store."""
    url = settings.store_url
    if scheme(url) in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        return url
    # redis-py's unix:// is redis+unix:// to the limits library.
    return "redis+" + url if scheme(url) == "unix" else "memory://"


def install(app: Flask, blueprint: Blueprint, settings: Settings, key_func: Callable[[], str]) -> Limiter:
    """Limit every view of ``blueprint`` as the settings say."""
    # The counters live under the models' key prefix, so two apps on one redis count apart
    # and whatever cleans the prefix cleans them.
    prefix = settings.redis_prefix
    uri = storage_uri(settings)
    options: dict[str, Any] = {}
    if uri.startswith("redis"):
        # Imported here: redis is needed only by the apps that chose it.
        from .storage.redis import client_options

        # Without timeouts a redis that hangs would hang every request here. Shorter ones than
        # the store's: a counter is one small command, and while redis is away flask-limiter
        # also pings it now and then to see if it is back, in the request that comes then.
        options = {
            "key_prefix": prefix + "limits",
            **client_options(),
            "socket_timeout": _COUNTER_SECONDS,
            "socket_connect_timeout": _COUNTER_SECONDS,
        }
    limiter = Limiter(
        key_func=key_func,
        app=app,
        storage_uri=uri,
        storage_options=options,
        in_memory_fallback_enabled=True,
        headers_enabled=True,
        key_prefix=prefix,
        default_limits=[],
        application_limits=[],
    )
    block = settings.view_rate_limit_block
    rate = limit_string(settings.view_rate_limit)
    items = parse_many(rate)

    def cost() -> int:
        # Counting without refusing: once a window is used up, further hits cost nothing, so
        # no limit is ever breached and the headers report zero remaining.
        if block:
            return 1
        key = key_func()
        used_up = any(limiter.limiter.get_window_stats(item, prefix, key, _SCOPE).remaining <= 0 for item in items)
        return 0 if used_up else 1

    limiter.shared_limit(rate, scope=_SCOPE, cost=cost)(blueprint)
    return limiter

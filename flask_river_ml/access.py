"""Who may call the blueprint: access tokens on requests, the challenge, the rate-limit key.

Flask-side glue of :mod:`flask_river_ml.auth`: it reads the request, remembers the result in
``g`` for the rest of the request, and builds the ``WWW-Authenticate`` challenge riverapi
follows.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from flask import Flask, current_app, g, request, url_for

from .auth import Unauthorized
from .errors import Forbidden
from .settings import EXTENSION_KEY


def state(app: Flask | None = None) -> Any:
    """The registration of ``app`` (default: the current app) in ``app.extensions["river_ml"]``."""
    app = app or current_app
    try:
        return app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("flask-river-ml is not registered on this app; call init_app(app) first.") from None


#: Views that also take the access token as ``?token=``: browsers cannot set headers on
#: EventSource.
_QUERY_TOKEN_VIEWS = ("stream_metrics", "stream_events")


def _access_token(view_name: str) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if view_name in _QUERY_TOKEN_VIEWS:
        return request.args.get("token") or None
    return None


def _view_name() -> str:
    # Endpoints are "<blueprint>.<view>" or "<blueprint>.<view>_<n>" (see create_blueprint).
    endpoint = (request.endpoint or "").rpartition(".")[2]
    return re.sub(r"_\d+$", "", endpoint)


def current_user() -> str | None:
    """The user named by a valid access token on this request, or None (checked once)."""
    if "river_ml_user" not in g:
        token = _access_token(_view_name())
        registration = state()
        host_checked = registration.extension.credentials_check is not None
        try:
            g.river_ml_user = None if token is None else registration.auth.verify(token, host_checked)
        except Unauthorized as error:
            g.river_ml_user, g.river_ml_auth_error = None, error
    return g.river_ml_user  # type: ignore[no-any-return]


def require_user() -> None:
    """Raise :class:`Unauthorized` (why, if a token was refused) unless a user is known."""
    if current_user() is None:
        raise g.get("river_ml_auth_error") or Unauthorized("This view needs an access token.")


def require_scope(scope: str) -> None:
    """Raise :class:`Unauthorized` unless a user is known (see :func:`require_user`)."""
    require_user()


def check_pickle_upload() -> None:
    """Raise :class:`Forbidden` unless this request may upload a pickle.

    A protected upload view has checked the manage scope already. Otherwise
    RIVER_ML_UPLOAD_PICKLES decides: loopback clients only (the address is the one werkzeug
    sees: behind a reverse proxy, wrap the app in ``ProxyFix``), or any client.
    """
    settings = state().settings
    if not settings["RIVER_ML_DISABLE_AUTHENTICATION"] and "model" in settings["RIVER_ML_AUTHENTICATED_VIEWS"]:
        return
    if settings["RIVER_ML_UPLOAD_PICKLES"] == "any" or _is_loopback(request.remote_addr):
        return
    raise Forbidden(
        f"Pickle uploads are accepted from loopback clients only, and {request.remote_addr} is not one "
        "(RIVER_ML_UPLOAD_PICKLES = 'loopback'). Create the model from a JSON description instead, "
        "or set RIVER_ML_UPLOAD_PICKLES = 'any' on a closed network."
    )


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def rate_limit_key() -> str:
    """Who a request counts against: its user when authenticated, else its address."""
    user = current_user()
    return f"user:{user}" if user else f"address:{request.remote_addr}"


def challenge() -> str:
    """Where riverapi (or any client) gets an access token: realm is the token endpoint."""
    domain = state().settings["RIVER_ML_DOMAIN_URL"]
    if domain:
        service = domain.rstrip("/")
        realm = service + url_for(f"{request.blueprint}.auth_token")
    else:
        # Werkzeug checks the Host header against the app's TRUSTED_HOSTS, when it has them.
        service = request.host_url.rstrip("/")
        realm = url_for(f"{request.blueprint}.auth_token", _external=True)
    return f'Bearer realm="{realm}",service="{service}"'

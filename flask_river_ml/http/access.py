"""Who may call the blueprint: access tokens and their scopes, who may upload a pickle, the
challenge, the rate-limit key.

Flask-side glue of :mod:`flask_river_ml.auth`: it reads the request, remembers the result in
``g`` for the rest of the request, and builds the ``WWW-Authenticate`` challenge riverapi
follows.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g, request, url_for

from .. import layout
from ..auth import MANAGE, Principal, Unauthorized
from ..errors import Forbidden
from ..settings import EXTENSION_KEY

if TYPE_CHECKING:  # the extension imports this module
    from ..extension import State


def state(app: Flask | None = None) -> State:
    """The registration of ``app`` (default: the current app) in ``app.extensions["river_ml"]``."""
    app = app or current_app
    try:
        return app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("flask-river-ml is not registered on this app; call init_app(app) first.") from None


#: Endpoints that also take the access token as ``?token=``: browsers cannot set headers on
#: EventSource.
_QUERY_TOKEN_ENDPOINTS = ("stream_metrics", "stream_events")


def _access_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # request.endpoint is "<blueprint>.<endpoint>", with the endpoints that views.ROUTES names.
    if (request.endpoint or "").rpartition(".")[2] in _QUERY_TOKEN_ENDPOINTS:
        return request.args.get("token") or None
    return None


def current_principal() -> Principal | None:
    """Who a valid access token on this request speaks for, or None (checked once a request)."""
    if "river_ml_principal" not in g:
        token = _access_token()
        registration = state()
        host_checked = registration.extension.credentials_check is not None
        try:
            g.river_ml_principal = None if token is None else registration.auth.verify(token, host_checked)
        except Unauthorized as error:
            g.river_ml_principal, g.river_ml_auth_error = None, error
    return g.river_ml_principal  # type: ignore[no-any-return]


def current_user() -> str | None:
    """The user named by a valid access token on this request, or None."""
    principal = current_principal()
    return None if principal is None else principal.name


def require_user() -> Principal:
    """Who a valid access token speaks for; :class:`Unauthorized` (why, if a token was refused)
    when there is none."""
    principal = current_principal()
    if principal is None:
        error = g.get("river_ml_auth_error") or Unauthorized("This view needs an access token.")
        error.add_headers({"WWW-Authenticate": challenge()})
        raise error
    return principal


def require_scope(scope: str) -> None:
    """:class:`Unauthorized` without a valid access token, :class:`Forbidden` naming ``scope``
    when the token does not grant it."""
    principal = require_user()
    if scope not in principal.scopes:
        held = ", ".join(principal.scopes) or "none"
        # RFC 6750's answer to a token that is valid but not enough; clients that do not read
        # it (riverapi reads the header on a 401 only) lose nothing.
        raise Forbidden(
            f"This view needs the '{scope}' scope; the user '{principal.name}' has {held}.",
            {"WWW-Authenticate": f'{challenge()},error="insufficient_scope",scope="{scope}"'},
        )


def issue_token() -> dict[str, Any]:
    """An access token for the request's Basic credentials (``user:api_token``);
    :class:`Unauthorized` with the challenge when they are missing or refused, so that a client
    sent here by one learns where it is again."""
    credentials = request.authorization
    registration = state()
    try:
        if credentials is None or credentials.type != "basic" or not credentials.username:
            raise Unauthorized("Send Authorization: Basic base64(user:api_token) to get an access token.")
        check = registration.extension.credentials_check
        return registration.auth.issue(credentials.username, credentials.password or "", check)
    except Unauthorized as error:
        error.add_headers({"WWW-Authenticate": challenge()})
        raise


def check_pickle_upload() -> None:
    """Raise :class:`Forbidden` unless this request may upload a pickle.

    With authentication on and the model view protected, a user needs the manage scope (the
    route checks it; this check does not rely on that). Otherwise RIVER_ML_UPLOAD_PICKLES
    decides: loopback clients only, or any client. The address is the one werkzeug sees:
    behind a reverse proxy it is the proxy's, unless the app is wrapped in ``ProxyFix``.
    """
    settings = state().settings
    if settings.protects("model"):
        require_scope(MANAGE)
        return
    if settings.upload_pickles == "any" or _is_loopback(request.remote_addr):
        return
    raise Forbidden(
        f"Pickle uploads are accepted from loopback clients only, and {request.remote_addr or 'this client'} "
        "is not one (RIVER_ML_UPLOAD_PICKLES = 'loopback'). Create the model from a JSON description "
        "instead, or set RIVER_ML_UPLOAD_PICKLES = 'any' on a closed network; behind a reverse proxy, "
        "wrap the app in werkzeug's ProxyFix so that the client's own address is seen."
    )


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a unix socket's peer, or anything else that is not an IP address
        return False
    # ::ffff:127.0.0.1 is the IPv4 loopback seen through a dual-stack socket.
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def rate_limit_key() -> str:
    """Who a request counts against: its user when authenticated, else its address."""
    user = current_user()
    return layout.rate_limited(user, request.remote_addr)


def challenge() -> str:
    """Where riverapi (or any client) gets an access token: realm is the token endpoint."""
    domain = state().settings.domain_url
    if domain:
        service = domain.rstrip("/")
        realm = service + url_for(f"{request.blueprint}.auth_token")
    else:
        # Werkzeug checks the Host header against the app's TRUSTED_HOSTS, when it has them.
        service = request.host_url.rstrip("/")
        realm = url_for(f"{request.blueprint}.auth_token", _external=True)
    return f'Bearer realm="{realm}",service="{service}"'

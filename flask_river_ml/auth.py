"""Users, their scopes, API tokens and access tokens, Flask-free.

A user has a password, a long-lived API token and scopes; the store keeps only the hashes of
the first two (the password with werkzeug's salted key derivation, the random API token with
SHA-256, which is enough for 256 random bits and keeps every token exchange cheap). A client
exchanges ``user:api_token`` for a short-lived *access token*: an itsdangerous signature of the
user's name, their scopes and a stamp of their current API token, so the access token stops
working when the user is deleted or gets a new API token, as well as when it expires.

Scopes say what a token may do: ``predict`` reads (predictions, models, their parameters,
metrics, stats, streams, the dashboard's data), ``learn`` changes what a model knows (learn,
label), ``manage`` changes which models exist and hands them out (upload, replace, delete,
download). An access token never grants more than it was issued with, nor more than its user
holds now: narrowing a user's scopes takes effect at once, widening them with the next access
token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.security import check_password_hash, generate_password_hash

from . import layout
from .errors import ConfigurationError, InvalidInput, RiverMLError
from .names import NAME_PATTERN
from .storage import Backend

logger = logging.getLogger("flask_river_ml.auth")

#: The scopes, in the order they are listed everywhere.
PREDICT, LEARN, MANAGE = "predict", "learn", "manage"
SCOPES: tuple[str, ...] = (PREDICT, LEARN, MANAGE)

#: Scope names: an iterable of them, or one string of comma-separated names.
ScopeNames = str | Iterable[str]
#: A host app's own check of ``(username, api_token)``; see ``FlaskRiverML.verify_credentials``.
#: True grants every scope, False or None refuses, scope names grant those.
CredentialsCheck = Callable[[str, str], bool | ScopeNames | None]


class Unauthorized(RiverMLError):
    """Missing, malformed, expired or revoked credentials."""

    status = 401


class UserExists(RiverMLError):
    """A user of that name exists already."""

    status = 409


class UserNotFound(RiverMLError):
    """No user of that name."""

    status = 404


@dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for, and what it lets them do now."""

    name: str
    scopes: tuple[str, ...]


def _listed(names: ScopeNames) -> list[str]:
    # A bare string is a comma list: iterating it would give its letters.
    items = names.split(",") if isinstance(names, str) else list(names)
    if not all(isinstance(item, str) for item in items):
        raise InvalidInput(f"Scope names are strings, one of {', '.join(SCOPES)}; got {items!r}.")
    return [item.strip() for item in items if item.strip()]


def scopes_from(names: ScopeNames) -> tuple[str, ...]:
    """Validated scope names, each once, in the order of :data:`SCOPES`."""
    given = _listed(names)
    if not given:
        raise InvalidInput(f"Give at least one scope: {', '.join(SCOPES)}.")
    unknown = sorted(set(given) - set(SCOPES))
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise InvalidInput(f"Unknown scope {listed}: the scopes are {', '.join(SCOPES)}.")
    return tuple(scope for scope in SCOPES if scope in given)


def _granted(result: object) -> tuple[str, ...]:
    """The scopes a host app's credentials check granted; :class:`Unauthorized` if it refused."""
    if result is True:
        return SCOPES
    if result is None or result is False:
        raise Unauthorized("Invalid username or token.")
    if not isinstance(result, (str, Iterable)) or isinstance(result, (bytes, dict)):
        _misconfigured(f"it returned a {type(result).__name__}.")
    try:
        names = _listed(result)
        scopes = scopes_from(names) if names else ()
    except InvalidInput as error:
        _misconfigured(error.message)
    if not scopes:
        raise Unauthorized("Invalid username or token.")
    return scopes


def _misconfigured(problem: str) -> NoReturn:
    # The host app's bug, not the client's: fail closed, and loudly.
    scopes = ", ".join(SCOPES)
    message = f"The verify_credentials check must return True, False, None or scope names ({scopes}); {problem}"
    logger.error(message)
    raise ConfigurationError(message)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _held(record: dict[str, Any]) -> tuple[str, ...]:
    # A record written before scopes existed held every one; anything unknown counts for nothing.
    held = record.get("scopes", SCOPES)
    return tuple(scope for scope in SCOPES if isinstance(held, (list, tuple)) and scope in held)


class Auth:
    """The users of one app and the access tokens it issues."""

    def __init__(self, backend: Backend, secret: str, expires_seconds: int) -> None:
        self.backend = backend
        self.expires_seconds = expires_seconds
        self._serializer = URLSafeTimedSerializer(secret, salt="flask-river-ml access token")

    # --- users ---------------------------------------------------------------------------------

    def create_user(self, name: str, password: str, scopes: ScopeNames = SCOPES) -> str:
        """Create a user with ``scopes`` (every one by default); their new API token (shown
        once, only its hash is kept)."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidInput(f"Invalid user name {name!r}: use letters, digits, '.', '_' or '-'.")
        if not password:
            raise InvalidInput("A password is required.")
        held = scopes_from(scopes)
        token = secrets.token_urlsafe(32)
        record = {"password": generate_password_hash(password), "token": _digest(token), "scopes": list(held)}
        if not self.backend.add(layout.user(name), json.dumps(record).encode()):
            raise UserExists(f"A user named '{name}' exists already.")
        return token

    def get_token(self, name: str, password: str) -> str:
        """A fresh API token for a user who gives their password; the old one stops working.
        The user keeps their scopes."""
        fresh = secrets.token_urlsafe(32)

        def rotate(raw: bytes | None) -> bytes:
            record = self._checked(name, raw, password)
            return json.dumps({**record, "token": _digest(fresh)}).encode()

        self.backend.update(layout.user(name), rotate)
        return fresh

    def set_scopes(self, name: str, scopes: ScopeNames) -> tuple[str, ...]:
        """Give a user exactly ``scopes``; the scopes they now hold.

        Access tokens already issued lose what the user no longer holds at once; scopes added
        come with the user's next access token.
        """
        held = scopes_from(scopes)

        def replace(raw: bytes | None) -> bytes:
            if raw is None:
                raise UserNotFound(f"No user named '{name}'.")
            return json.dumps({**json.loads(raw), "scopes": list(held)}).encode()

        self.backend.update(layout.user(name), replace)
        return held

    def scopes(self, name: str) -> tuple[str, ...]:
        """The scopes a user holds."""
        record = self._record(name)
        if record is None:
            raise UserNotFound(f"No user named '{name}'.")
        return _held(record)

    def delete_user(self, name: str) -> bool:
        """Delete a user; False when there was none."""
        return self.backend.delete(layout.user(name)) > 0

    def users(self) -> list[str]:
        """Every user's name, sorted."""
        return layout.user_names(self.backend.keys(layout.USERS))

    @staticmethod
    def _checked(name: str, raw: bytes | None, password: str) -> dict[str, Any]:
        if raw is None:
            raise UserNotFound(f"No user named '{name}'.")
        record: dict[str, Any] = json.loads(raw)
        if not check_password_hash(record["password"], password):
            raise Unauthorized("Wrong password.")
        return record

    def _record(self, name: str) -> dict[str, Any] | None:
        raw = self.backend.get(layout.user(name))
        return None if raw is None else json.loads(raw)

    # --- tokens --------------------------------------------------------------------------------

    def issue(self, name: str, api_token: str, check: CredentialsCheck | None = None) -> dict[str, Any]:
        """Exchange ``name:api_token`` for an access token: ``{token, expires_in, issued_at}``.

        With ``check`` (the host app's own), its answer decides and grants the scopes;
        otherwise the stored user does.
        """
        if check is not None:
            scopes = _granted(check(name, api_token))
            stamp = None
        else:
            record = self._record(name)
            # compare_digest on the digests: no timing hint of how much of a token matched.
            if record is None or not hmac.compare_digest(record["token"], _digest(api_token)):
                raise Unauthorized("Invalid username or token.")
            scopes, stamp = _held(record), record["token"][:16]
        return {
            "token": self._serializer.dumps({"user": name, "stamp": stamp, "scopes": list(scopes)}),
            "expires_in": self.expires_seconds,
            "issued_at": datetime.now(UTC).isoformat(),
        }

    def verify(self, access_token: str, host_checked: bool = False) -> Principal:
        """The user an access token names and the scopes it grants now; :class:`Unauthorized`
        when it is not valid now.

        ``host_checked``: the host app's own check issued it, so there is no stored user to
        compare with, and the token's scopes are the host's word.
        """
        try:
            payload = self._serializer.loads(access_token, max_age=self.expires_seconds)
        except SignatureExpired:
            raise Unauthorized("The access token expired; ask the token endpoint for a new one.") from None
        except BadSignature:
            raise Unauthorized("The access token is not valid.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("user"), str):
            raise Unauthorized("The access token is not valid.")
        # A token issued before scopes existed could do everything, as its user could.
        carried = payload.get("scopes", list(SCOPES))
        if not isinstance(carried, list) or not all(scope in SCOPES for scope in carried):
            raise Unauthorized("The access token is not valid.")
        name = payload["user"]
        if host_checked:
            return Principal(name, tuple(scope for scope in SCOPES if scope in carried))
        record = self._record(name)
        if record is None or record["token"][:16] != payload.get("stamp"):
            raise Unauthorized("The access token was revoked: the user was deleted or has a new API token.")
        return Principal(name, tuple(scope for scope in _held(record) if scope in carried))

"""Users, API tokens and access tokens, Flask-free.

A user has a password and a long-lived API token; the store keeps only their hashes (the
password with werkzeug's salted key derivation, the random API token with SHA-256, which is
enough for 256 random bits and keeps every token exchange cheap). A client exchanges
``user:api_token`` for a short-lived *access token*: an itsdangerous signature of the user's
name and a stamp of their current API token, so the access token stops working when the user
is deleted or gets a new API token, as well as when it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.security import check_password_hash, generate_password_hash

from .errors import InvalidInput, RiverMLError
from .names import NAME_PATTERN
from .storage import Backend

#: A host app's own check of ``(username, api_token)``; see ``FlaskRiverML.verify_credentials``.
CredentialsCheck = Callable[[str, str], bool]


class Unauthorized(RiverMLError):
    """Missing, malformed, expired or revoked credentials."""

    status = 401


class UserExists(RiverMLError):
    """A user of that name exists already."""

    status = 409


class UserNotFound(RiverMLError):
    """No user of that name."""

    status = 404


def _user_key(name: str) -> str:
    return f"user:{name}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    """The users of one app and the access tokens it issues."""

    def __init__(self, backend: Backend, secret: str, expires_seconds: int) -> None:
        self.backend = backend
        self.expires_seconds = expires_seconds
        self._serializer = URLSafeTimedSerializer(secret, salt="flask-river-ml access token")

    # --- users ---------------------------------------------------------------------------------

    def create_user(self, name: str, password: str) -> str:
        """Create a user; their new API token (shown once, only its hash is kept)."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidInput(f"Invalid user name {name!r}: use letters, digits, '.', '_' or '-'.")
        if not password:
            raise InvalidInput("A password is required.")
        token = secrets.token_urlsafe(32)
        record = {"password": generate_password_hash(password), "token": _digest(token)}
        if not self.backend.add(_user_key(name), json.dumps(record).encode()):
            raise UserExists(f"A user named '{name}' exists already.")
        return token

    def get_token(self, name: str, password: str) -> str:
        """A fresh API token for a user who gives their password; the old one stops working."""
        fresh = secrets.token_urlsafe(32)

        def rotate(raw: bytes | None) -> bytes:
            record = self._checked(name, raw, password)
            return json.dumps({**record, "token": _digest(fresh)}).encode()

        self.backend.update(_user_key(name), rotate)
        return fresh

    def delete_user(self, name: str) -> bool:
        """Delete a user; False when there was none."""
        return self.backend.delete(_user_key(name)) > 0

    def users(self) -> list[str]:
        """Every user's name, sorted."""
        return [key.split(":", 1)[1] for key in self.backend.keys("user:")]

    @staticmethod
    def _checked(name: str, raw: bytes | None, password: str) -> dict[str, Any]:
        if raw is None:
            raise UserNotFound(f"No user named '{name}'.")
        record: dict[str, Any] = json.loads(raw)
        if not check_password_hash(record["password"], password):
            raise Unauthorized("Wrong password.")
        return record

    def _record(self, name: str) -> dict[str, Any] | None:
        raw = self.backend.get(_user_key(name))
        return None if raw is None else json.loads(raw)

    # --- tokens --------------------------------------------------------------------------------

    def issue(self, name: str, api_token: str, check: CredentialsCheck | None = None) -> dict[str, Any]:
        """Exchange ``name:api_token`` for an access token: ``{token, expires_in, issued_at}``."""
        if check is not None:
            if not check(name, api_token):
                raise Unauthorized("Invalid username or token.")
            stamp = None
        else:
            record = self._record(name)
            # compare_digest on the digests: no timing hint of how much of a token matched.
            if record is None or not hmac.compare_digest(record["token"], _digest(api_token)):
                raise Unauthorized("Invalid username or token.")
            stamp = record["token"][:16]
        return {
            "token": self._serializer.dumps({"user": name, "stamp": stamp}),
            "expires_in": self.expires_seconds,
            "issued_at": datetime.now(timezone.utc).isoformat(),
        }

    def verify(self, access_token: str, host_checked: bool = False) -> str:
        """The user an access token names; :class:`Unauthorized` when it is not valid now.

        ``host_checked``: the host app's own check issued it, so there is no stored user to
        compare with.
        """
        try:
            payload = self._serializer.loads(access_token, max_age=self.expires_seconds)
        except SignatureExpired:
            raise Unauthorized("The access token expired; ask the token endpoint for a new one.") from None
        except BadSignature:
            raise Unauthorized("The access token is not valid.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("user"), str):
            raise Unauthorized("The access token is not valid.")
        name = payload["user"]
        if host_checked:
            return name
        record = self._record(name)
        if record is None or record["token"][:16] != payload.get("stamp"):
            raise Unauthorized("The access token was revoked: the user was deleted or has a new API token.")
        return name

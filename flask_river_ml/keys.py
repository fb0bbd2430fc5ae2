"""The app's two secret keys: where each one comes from, and a check that every host sharing a
store holds the same ones.

``RIVER_ML_SHELVE_SECRET_KEY``, the *blob key*, signs every blob the engine stores (snapshots,
log records, predictions waiting for their label): a host with another blob key refuses every
blob written by the others, and they refuse its. ``RIVER_ML_JWT_SECRET_KEY``, the *token key*,
signs access tokens: a host with another token key refuses the tokens the others issue. Both
faults used to surface request by request, as errors; :class:`KeyCheck` turns them into one
error at start-up that names the setting.

Where each key comes from, the first that applies:

- blob key: the setting; a key generated earlier in ``RIVER_ML_CACHE_DIR`` (the models stored
  so far are signed with it, so it keeps winning); a key derived from Flask's ``SECRET_KEY``;
  a key generated now and kept in ``RIVER_ML_CACHE_DIR``.
- token key: the setting; a key derived from ``SECRET_KEY``; the key kept in
  ``RIVER_ML_CACHE_DIR``, generated when absent. Nothing stored depends on the token key
  (access tokens live minutes), and ``SECRET_KEY`` already won over the cache folder before keys
  were derived, so hosts sharing ``SECRET_KEY`` agree whatever their cache folders hold.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import layout
from .errors import ConfigurationError, StoreUnavailable
from .storage import Backend

if TYPE_CHECKING:  # settings imports Flask; the keys are needed without it
    from .settings import Settings

logger = logging.getLogger("flask_river_ml.keys")

BLOB_KEY = "RIVER_ML_SHELVE_SECRET_KEY"
TOKEN_KEY = "RIVER_ML_JWT_SECRET_KEY"


@dataclass(frozen=True)
class _Role:
    """What tells one key apart: its setting, its file in the cache folder, the salt that
    derives it from ``SECRET_KEY``, and whether a key already in the cache folder wins over
    the derived one."""

    setting: str
    cache_name: str
    salt: bytes
    cache_first: bool
    #: What goes wrong between two hosts that do not share this key.
    harm: str
    #: What to give every host so that nothing stored is lost.
    keep: str


_ROLES = {
    BLOB_KEY: _Role(
        BLOB_KEY,
        "shelve_secret_key",
        b"flask-river-ml blob signing key",
        cache_first=True,
        harm="each host would refuse the models, logs and waiting predictions the other stored",
        keep="To keep the models already stored, give every host the key they were stored with.",
    ),
    TOKEN_KEY: _Role(
        TOKEN_KEY,
        "jwt_secret_key",
        b"flask-river-ml access token signing key",
        cache_first=False,
        harm="each host would refuse the access tokens the other issued",
        keep="Nothing stored depends on this key: changing it only makes clients ask for new access tokens.",
    ),
}


@dataclass(frozen=True)
class Key:
    """One secret key of this host and where it came from."""

    setting: str
    value: str
    #: How this host got the key, for messages (never the key, nor a path).
    source: str
    #: 256 random bits this package generated: no search can find it, however cheap each guess.
    random: bool


def derived_key(secret_key: str | bytes, setting: str) -> str:
    """The key that ``setting`` (BLOB_KEY or TOKEN_KEY) gets from Flask's ``SECRET_KEY``.

    An HMAC-SHA256 of a salt of its own, keyed by ``SECRET_KEY``: the two keys differ from each
    other and from ``SECRET_KEY``, and hosts that share ``SECRET_KEY`` derive the same ones.
    """
    secret = secret_key if isinstance(secret_key, bytes) else str(secret_key).encode()
    return hmac.new(secret, _ROLES[setting].salt, hashlib.sha256).hexdigest()


def resolve(setting: str, configured: str | None, secret_key: Any, cache_dir: str) -> Key:
    """This host's key for ``setting``, from the setting's value ``configured``, Flask's
    ``secret_key`` and the cache folder, in the order the module's docstring gives."""
    role = _ROLES[setting]
    if configured is not None:
        return Key(setting, configured, f"is set in {setting}", random=False)
    cached = Path(cache_dir) / role.cache_name
    if role.cache_first and cached.exists():
        return _cached(role, cache_dir)
    if secret_key:
        return Key(setting, derived_key(secret_key, setting), "is derived from SECRET_KEY", random=False)
    return _cached(role, cache_dir)


def host_keys(settings: Settings, secret_key: Any) -> tuple[Key, Key]:
    """This host's blob key and token key, from the validated settings and Flask's SECRET_KEY."""
    return (
        resolve(BLOB_KEY, settings.shelve_secret_key, secret_key, settings.cache_dir),
        resolve(TOKEN_KEY, settings.jwt_secret_key, secret_key, settings.cache_dir),
    )


def _cached(role: _Role, cache_dir: str) -> Key:
    return Key(
        role.setting,
        cached_secret(cache_dir, role.cache_name),
        f"was generated in this host's RIVER_ML_CACHE_DIR (the file {role.cache_name})",
        random=True,
    )


def cached_secret(cache_dir: str, name: str) -> str:
    """A random secret kept in ``cache_dir/name``, created on first use.

    Every process and every restart that shares the folder gets the same secret: the file is
    written under a temporary name and linked into place, so of two processes racing to create
    it, one wins and the other reads the winner's.
    """
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        temporary = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(temporary, target)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    secret = target.read_text().strip()
    if not secret:
        raise ConfigurationError(f"The secret file {target} is empty; delete it to have a new one made.")
    return secret


# --- fingerprints --------------------------------------------------------------------------------

_CONTEXT = b"flask-river-ml key fingerprint\x00"


def _hmac_fingerprint(key: bytes, salt: bytes) -> str:
    return hmac.new(key, _CONTEXT + salt, hashlib.sha256).hexdigest()


def _scrypt_fingerprint(key: bytes, salt: bytes) -> str:
    # 16 MiB and some 50 ms a guess: within OpenSSL's default memory bound of 32 MiB.
    return hashlib.scrypt(key, salt=_CONTEXT + salt, n=2**14, r=8, p=1, dklen=32).hex()


#: What a fingerprint may be computed with. Whoever reads the store can test guesses of the key
#: against its fingerprint: a generated key holds 256 random bits and needs no more than an
#: HMAC, a key a person chose (the setting, or SECRET_KEY it is derived from) may be guessable
#: and gets a memory-hard scrypt, so that each guess costs what a password's would. The names
#: and their parameters are fixed here, never read from the store: a forged record cannot make
#: a host spend more than this.
_ALGORITHMS: dict[str, Callable[[bytes, bytes], str]] = {
    "hmac-sha256": _hmac_fingerprint,
    "scrypt-16384-8-1": _scrypt_fingerprint,
}


def fingerprint_record(key: Key) -> dict[str, str]:
    """A new fingerprint of ``key`` with a salt of its own: what the store keeps."""
    algorithm = "hmac-sha256" if key.random else "scrypt-16384-8-1"
    salt = secrets.token_bytes(16)
    return {
        "algorithm": algorithm,
        "salt": salt.hex(),
        "fingerprint": _ALGORITHMS[algorithm](key.value.encode(), salt),
    }


def matches(key: Key, record: Mapping[str, Any]) -> bool:
    """Whether ``record`` (see :func:`fingerprint_record`) is a fingerprint of ``key``.

    :class:`ValueError` when the record is not one this package writes.
    """
    name, salt, fingerprint = record.get("algorithm"), record.get("salt"), record.get("fingerprint")
    if not (isinstance(name, str) and isinstance(salt, str) and isinstance(fingerprint, str)):
        raise ValueError("not a key fingerprint")
    if name not in _ALGORITHMS:
        raise ValueError("not a key fingerprint")
    expected = _ALGORITHMS[name](key.value.encode(), bytes.fromhex(salt))
    return hmac.compare_digest(expected, fingerprint)


class KeysDiffer(ConfigurationError):
    """This host's blob or token key is not the one the store it shares was first used with.

    Raised by ``init_app``; a host that could only check once serving (its store was down at
    start) answers every request with it until its configuration is fixed and it restarts.
    """

    status = 503
    headers = {"Retry-After": "60"}


class KeyCheck:
    """Compares this host's keys with the fingerprints the store keeps of them.

    The first host to use a store writes the fingerprint of each key (``Backend.add``: of two
    hosts starting together, one writes and the other compares with it); every later one
    compares, and :class:`KeysDiffer` names the setting that differs. A store that lost its data
    simply gets the fingerprints of the next host to check.
    """

    def __init__(self, backend: Backend, keys: Sequence[Key]) -> None:
        self._backend = backend
        self._unchecked = list(keys)
        self._refusal: str | None = None
        self._mutex = threading.Lock()

    @property
    def done(self) -> bool:
        """Whether every key was checked and agreed with the store."""
        return not self._unchecked and self._refusal is None

    def ensure(self) -> None:
        """Nothing once every key agreed (a check of two attributes); otherwise :meth:`run`."""
        if not self.done:
            self.run()

    def start(self) -> None:
        """Check the keys at start-up, where a store that is down is no reason to refuse:
        servers must start (and gunicorn replace its workers) during an outage. The keys are
        then checked before every use until the store answers. :class:`KeysDiffer` when one
        differs."""
        try:
            self._run()
        except StoreUnavailable as error:
            logger.warning("The store is unavailable; this host's keys are checked once it is back: %s", error.message)

    def run(self) -> None:
        """Check the keys not checked yet, once serving.

        :class:`KeysDiffer` when one differs, then on every later call; the first one is
        logged too, since no start-up error tells the operator. :class:`StoreUnavailable` when
        the store cannot be reached, and the next call tries again.
        """
        first = self._refusal is None
        try:
            self._run()
        except KeysDiffer as error:
            if first:
                logger.error("%s", error.message)
            raise

    def _run(self) -> None:
        with self._mutex:
            if self._refusal is not None:
                raise KeysDiffer(self._refusal)
            while self._unchecked:
                refusal = self._check(self._unchecked[0])
                if refusal is not None:
                    self._refusal = refusal
                    raise KeysDiffer(refusal)
                self._unchecked.pop(0)

    def _check(self, key: Key) -> str | None:
        """None when the store agrees with ``key``, or records it; else what to tell the operator."""
        where = layout.fingerprint(key.setting)
        raw = self._backend.get(where)
        if raw is None:
            if self._backend.add(where, json.dumps(fingerprint_record(key)).encode()):
                logger.info("Recorded a fingerprint of this host's %s in the store.", key.setting)
                return None
            # Another host recorded its fingerprint first: this host must agree with it.
            raw = self._backend.get(where)
            if raw is None:
                raise StoreUnavailable(f"The store's fingerprint of {key.setting} kept changing; try again.")
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a key fingerprint")
            if matches(key, record):
                return None
        except ValueError:
            return (
                f"The store's fingerprint of {key.setting} (under '{where}') is not one flask-river-ml writes. "
                f"If the store was written by another program, give this app a store of its own; otherwise "
                f"delete that entry and start again: the next host records its key."
            )
        role = _ROLES[key.setting]
        # Where SECRET_KEY decides: the setting always wins over it, the cache file of the blob key too.
        derived_when = f"no {key.setting} set" + (
            f" and no {role.cache_name} file in RIVER_ML_CACHE_DIR" if role.cache_first else ""
        )
        return (
            f"This host's {key.setting} is not the key the store it shares was first used with: "
            f"{role.harm}. This host's key {key.source}. Set the same {key.setting} on every host sharing "
            f"this store, or the same SECRET_KEY on every host with {derived_when}. {role.keep} A store "
            f"whose data is gone records the key of the next host that starts."
        )

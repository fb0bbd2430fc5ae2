"""Signed pickles: how the engine turns objects into the bytes a backend stores.

Every pickled blob is prefixed with an HMAC-SHA256 of its content, keyed by
``RIVER_ML_SHELVE_SECRET_KEY``. A blob whose signature does not match is refused before
unpickling, so whoever can write to the store but does not hold the key cannot make the
server run code.

Pickling and unpickling run the code of the objects pickled (a model's ``__reduce__`` and
``__setstate__``, Rust state included): whatever that raises is :class:`ModelFailed`.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

import dill

from .errors import TamperedData
from .flavors import model_code

_DIGEST = hashlib.sha256
_MAC_SIZE = _DIGEST().digest_size
# The first byte after the signature says which pickler wrote the blob: the C pickler is an
# order of magnitude faster than dill, which is only needed for what pickle cannot handle
# (classes defined in __main__, lambdas, closures).
_PICKLE, _DILL = b"p", b"d"


class Codec:
    """Pickles and signs, verifies and unpickles, with one secret key."""

    def __init__(self, secret: str | bytes) -> None:
        self._keyed = hmac.new(secret.encode() if isinstance(secret, str) else bytes(secret), digestmod=_DIGEST)

    def _signature(self, payload: bytes) -> bytes:
        # A copy of the keyed state: keying a new HMAC costs more than hashing a record.
        mac = self._keyed.copy()
        mac.update(payload)
        return mac.digest()

    def sign(self, payload: bytes) -> bytes:
        """``payload`` prefixed with its signature."""
        return self._signature(payload) + payload

    def verify(self, blob: bytes) -> bytes:
        """The payload of a signed ``blob``; :class:`TamperedData` when the signature is wrong."""
        mac, payload = blob[:_MAC_SIZE], blob[_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._signature(payload)):
            raise TamperedData(
                "A stored blob failed its signature check and was not loaded: it was written with another "
                "RIVER_ML_SHELVE_SECRET_KEY (processes and hosts sharing a store need the same one) or tampered with."
            )
        return payload

    def dumps(self, obj: Any) -> bytes:
        """A signed pickle of ``obj``."""
        with model_code("The model's state could not be pickled"):
            try:
                payload = _PICKLE + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError):
                payload = _DILL + dill.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return self.sign(payload)

    def loads(self, blob: bytes) -> Any:
        """The object in a blob written by :meth:`dumps` with the same key."""
        payload = self.verify(blob)
        kind, body = payload[:1], payload[1:]
        with model_code("A stored model could not be unpickled"):
            return dill.loads(body) if kind == _DILL else pickle.loads(body)

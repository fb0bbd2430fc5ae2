"""A model's entry in the store and the generations it carries.

The entry (``layout.model``) says that the model exists, its flavor and its generation. Its
bytes are the same for the same model, so a commit guarded by them checks, in one
comparison, that the model it decided on is still the stored one.

Generations are unique over the store's whole life, its loss included: each carries the
store's identity, a random value created with the store's first generation and kept beside
its counter, so a store that lost its data (a redis restarted without persistence, a deleted
SQLite file) starts a new identity and never hands out a generation a replica already has.
"""

from __future__ import annotations

import functools
import json
import secrets
from typing import Any

from .. import layout
from ..errors import ModelNotFound
from ..storage import Backend


@functools.lru_cache(maxsize=1024)
def entry(flavor: str, generation: str | None) -> bytes:
    """The model entry of a model of ``flavor`` at ``generation`` (every guarded commit asks
    for the entry of its replica: made once per generation)."""
    return json.dumps({"flavor": flavor, "generation": generation}).encode()


def read_entry(backend: Backend, name: str) -> dict[str, Any]:
    """The stored entry of model ``name``; :class:`ModelNotFound` when there is none."""
    raw = backend.get(layout.model(name))
    if raw is None:
        raise ModelNotFound(name)
    return parse_entry(raw)


def parse_entry(raw: bytes) -> dict[str, Any]:
    """``{"flavor", "generation"}`` of an entry's bytes."""
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def next_generation(backend: Backend) -> str:
    """A generation never handed out before by this store.

    One counter and identity for the whole store, read and moved in one atomic step (so a
    store emptied in between cannot pair an old identity with a new count): a deleted and
    re-created name never reuses a generation, nor does a store that lost its data.
    """
    return backend.update(layout.GENERATION, following).decode()


def following(last: bytes | None) -> bytes:
    """The generation after ``last``: the same store identity, the counter one up. A store
    without a generation (new, or one that lost its data) gets a new random identity; a bare
    counter (written before generations carried an identity) gets one too."""
    identity, _, counter = (last or b"").decode().rpartition(":")
    if not identity:
        identity = secrets.token_hex(8)
    return f"{identity}:{int(counter or 0) + 1}".encode()

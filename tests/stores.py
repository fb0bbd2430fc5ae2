"""Helpers for tests that write a store directly, as another process (or a damaged store) would."""

from __future__ import annotations

from flask_river_ml.storage import Backend
from flask_river_ml.storage.base import Change, Guard


def append(backend: Backend, log: str, record: bytes) -> int:
    """Append ``record`` to ``log`` whatever its head: a commit guarded by a key nothing else changes."""
    backend.set("tests:unchanged", b"u")
    outcome = backend.commit(Change(record=record), Guard(log, None, "tests:unchanged", b"u"))
    assert outcome.seq is not None
    return outcome.seq

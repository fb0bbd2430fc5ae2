"""Helpers for tests that write a store directly, as another process (or a damaged store) would,
and the custom backend of docs/engine.md, defined from the page itself."""

from __future__ import annotations

import re
from pathlib import Path

from flask_river_ml.storage import Backend
from flask_river_ml.storage.base import Change, Guard


def append(backend: Backend, log: str, record: bytes) -> int:
    """Append ``record`` to ``log`` whatever its head: a commit guarded by a key nothing else changes."""
    backend.set("tests:unchanged", b"u")
    outcome = backend.commit(Change(record=record), Guard(log, None, "tests:unchanged", b"u"))
    assert outcome.seq is not None
    return outcome.seq


DOCS = Path(__file__).resolve().parent.parent / "docs" / "engine.md"


def documented_backend() -> type[Backend]:
    """The custom backend of docs/engine.md's "A backend of your own", defined from the page."""
    section = DOCS.read_text().split("## A backend of your own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    assert len(code.group(1).splitlines()) < 25
    namespace: dict = {"__name__": "documented_backend"}
    exec(compile(code.group(1), str(DOCS), "exec"), namespace)  # noqa: S102 - the project's own docs
    cls: type[Backend] = namespace["SharedMemoryBackend"]
    return cls


#: Registered once for the session, as an app importing its module would.
SharedMemoryBackend = documented_backend()

"""The shelve backend: the embedded default, one file on the local disk.

It keeps Python's ``shelve`` role (a persistent dictionary in one file next to the app) but
stores its data in SQLite, the format ``dbm`` itself defaults to since Python 3.13. Unlike the
``dbm.dumb`` and ``gdbm`` files behind older shelves, an SQLite file is safe to share between
the processes of one machine (gunicorn workers, a CLI next to a server) and every write is
committed to the write-ahead log before the call returns, so a process killed with SIGKILL
loses nothing it acknowledged. Messages for the streams go through a table of the same file,
which a listener thread in each process polls, so every stream of the machine sees every event.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .base import Change, Guard, Outcome, Records
from .local import Loaded, commit_in
from .sqlite_bus import SqliteBus
from .sqlite_files import SWEEP_EVERY

_LIVE = "(expires IS NULL OR expires > ?)"


class ShelveBackend(SqliteBus):
    """The store on its SQLite file: values with expiry, logs, timings and file locks.

    ``path`` is the file stem from ``RIVER_ML_SHELVE_PATH``: the data lives in
    ``<path>.sqlite3`` and the lock files in ``<path>.locks/``.
    """

    name = "shelve"
    schemes = ("sqlite",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._ttl_writes = 0
        # Opened now, so that a wrong path fails at start-up (a store call: StoreUnavailable).
        self.ping()

    @classmethod
    def from_url(cls, url: str, *, root: str, prefix: str) -> ShelveBackend:
        """``sqlite:///relative/path`` (to ``root``) or ``sqlite:////absolute/path``: the file
        is the path, its ``.sqlite3`` suffix added when it has none."""
        parts = urlsplit(url)
        if parts.netloc or not parts.path.strip("/"):
            raise ValueError("names no SQLite file; use sqlite:///relative/path or sqlite:////absolute/path")
        path = Path(root, parts.path[1:])  # an absolute path (a second slash) wins over root
        return cls(path.with_suffix("") if path.suffix == ".sqlite3" else path)

    def _read_value(self, db: sqlite3.Connection, key: str) -> bytes | None:
        row = db.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    def _write_value(self, db: sqlite3.Connection, key: str, value: bytes, ttl: float | None) -> None:
        expires = None
        if ttl is not None:
            expires = time.time() + ttl
            self._ttl_writes += 1
            if self._ttl_writes % SWEEP_EVERY == 0:
                db.execute("DELETE FROM kv WHERE expires <= ?", (time.time(),))
        db.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, value, expires))

    def get(self, key: str) -> bytes | None:
        return self._read_value(self._db(), key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        # One statement is its own transaction: no BEGIN/COMMIT round trips on the hot path.
        self._write_value(self._db(), key, value, ttl)

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with self._transaction() as db:
            if self._read_value(db, key) is not None:
                return False
            self._write_value(db, key, value, ttl)
            return True

    def delete(self, *keys: str) -> int:
        with self._transaction() as db:
            found = sum(self._read_value(db, key) is not None for key in keys)
            db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in keys])
            timings = db.executemany("DELETE FROM timings WHERE key = ?", [(key,) for key in keys]).rowcount
            return found + max(timings, 0)

    def keys(self, prefix: str) -> list[str]:
        # substr rather than LIKE: a prefix may contain % or _.
        rows = self._db().execute(
            f"SELECT key FROM kv WHERE substr(key, 1, ?) = ? AND {_LIVE} ORDER BY key",
            (len(prefix), prefix, time.time()),
        )
        return [row[0] for row in rows]

    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        with self._transaction() as db:
            value = func(self._read_value(db, key))
            self._write_value(db, key, value, None)
            return value

    def observed(self, key: str) -> tuple[int, int, float] | None:
        return _View(self, self._db()).load([], None, [key])[2][0]

    def commit(self, change: Change, guard: Guard | None = None) -> Outcome:
        # The transaction holds the write lock from its first statement: nothing the rules
        # read can change before COMMIT.
        with self._transaction() as db:
            return commit_in(_View(self, db), change, guard)

    def read(self, log: str, after: int = 0) -> Records:
        return _records(self._db(), log, after)

    def trim(self, log: str, before: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM log WHERE name = ? AND seq < ?", (log, before))

    def delete_log(self, log: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM log WHERE name = ?", (log,))
            db.execute("DELETE FROM heads WHERE name = ?", (log,))

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        # flock on a fresh descriptor excludes other threads of this process as well as other
        # processes, and the kernel releases it when a holder dies.
        path = self.lock_dir / hashlib.sha256(name.encode()).hexdigest()
        # Made again if the store's folder was removed and made again.
        self.lock_dir.mkdir(exist_ok=True)
        deadline = time.monotonic() + timeout
        with open(path, "a") as handle:
            delay = 0.001
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"Could not take the lock {name!r} within {timeout} s.") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

def _records(db: sqlite3.Connection, log: str, after: int) -> Records:
    rows = db.execute("SELECT seq, record FROM log WHERE name = ? AND seq > ? ORDER BY seq", (log, after))
    return [(int(seq), bytes(record)) for seq, record in rows]


@functools.lru_cache(maxsize=64)
def _load_query(keys: int, log: bool, timings: int) -> str:
    """One statement for :meth:`_View.load`: a union of the values, the head and the timings,
    told apart by their first column."""
    parts = []
    if keys:
        parts.append(f"SELECT 0, key, value, 0, 0, 0 FROM kv WHERE key IN ({', '.join('?' * keys)}) AND {_LIVE}")
    if log:
        parts.append("SELECT 1, name, NULL, seq, 0, 0 FROM heads WHERE name = ?")
    if timings:
        parts.append(f"SELECT 2, key, NULL, count, total, mean FROM timings WHERE key IN ({', '.join('?' * timings)})")
    return " UNION ALL ".join(parts)


class _View:
    """The file's data inside one transaction (a :class:`~.local.View`)."""

    def __init__(self, store: ShelveBackend, db: sqlite3.Connection) -> None:
        self._store = store
        self._db = db

    def load(self, keys: Sequence[str], log: str | None, timings: Sequence[str]) -> Loaded:
        args: list = [*keys, time.time()] if keys else []
        if log is not None:
            args.append(log)
        args += timings
        found: dict[tuple[int, str], tuple] = {}
        query = _load_query(len(keys), log is not None, len(timings))
        if query:
            for kind, key, value, *numbers in self._db.execute(query, args):
                found[kind, key] = (bytes(value),) if kind == 0 else tuple(numbers)
        values = [found.get((0, key), (None,))[0] for key in keys]
        head = int(found[1, log][0]) if log is not None and (1, log) in found else 0
        counted = [found.get((2, key)) for key in timings]
        return values, head, [None if t is None else (int(t[0]), int(t[1]), float(t[2])) for t in counted]

    def records(self, log: str, after: int) -> Records:
        return _records(self._db, log, after)

    def put(self, key: str, value: bytes, ttl: float | None) -> None:
        self._store._write_value(self._db, key, value, ttl)

    def remove(self, key: str) -> None:
        self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def push(self, log: str, record: bytes) -> int:
        # The trigger moves the head, which outlives trimmed records.
        (seq,) = self._db.execute(
            "INSERT INTO log (name, seq, record) "
            "VALUES (?, COALESCE((SELECT seq FROM heads WHERE name = ?), 0) + 1, ?) RETURNING seq",
            (log, log, record),
        ).fetchone()
        return int(seq)

    def put_timing(self, key: str, timing: tuple[int, int, float]) -> None:
        # An upsert updates the row in place, where a REPLACE would delete and insert it.
        self._db.execute(
            "INSERT INTO timings (key, count, total, mean) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET count = excluded.count, total = excluded.total, mean = excluded.mean",
            (key, *timing),
        )

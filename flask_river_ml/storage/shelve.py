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
import hashlib
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import Backend, Guard, ListenerCheck, Records, Writes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS log (
    name TEXT NOT NULL, seq INTEGER NOT NULL, record BLOB NOT NULL, PRIMARY KEY (name, seq)
);
CREATE TABLE IF NOT EXISTS heads (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS log_head AFTER INSERT ON log BEGIN
    INSERT INTO heads (name, seq) VALUES (NEW.name, NEW.seq) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq;
END;
CREATE TABLE IF NOT EXISTS timings (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, total INTEGER NOT NULL, mean REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, message BLOB NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS listeners (id TEXT PRIMARY KEY, channel TEXT NOT NULL, seen REAL NOT NULL);
"""
_LIVE = "(expires IS NULL OR expires > ?)"
#: Expired keys are swept once every this many writes with a time to live.
_SWEEP_EVERY = 1000
#: How often a listener looks for new messages, and how long a message is kept for late readers.
_POLL_SECONDS, _MESSAGE_SECONDS = 0.05, 60.0
#: A listener that has not said it is alive for this long (its process died) counts no more.
_LISTENER_SECONDS = 5.0


class ShelveBackend(Backend):
    """One SQLite database in WAL mode, one connection per thread and process.

    ``path`` is the file stem from ``RIVER_ML_SHELVE_PATH``: the data lives in
    ``<path>.sqlite3`` and the lock files in ``<path>.locks/``.
    """

    name = "shelve"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(path)}.sqlite3")
        self.lock_dir = Path(f"{os.fspath(path)}.locks")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_dir.mkdir(exist_ok=True)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._ttl_writes = 0
        self._published = 0
        self._listening = ListenerCheck(self._ask_listeners)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        # A connection must not cross a fork (gunicorn --preload), hence the pid check.
        holder = getattr(self._local, "holder", None)
        if holder is None or holder.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only a power cut can lose the tail.
            db.execute("PRAGMA synchronous=NORMAL")
            holder = _Connection(db)
            # The connection closes when its thread ends (servers start a thread per request).
            weakref.finalize(holder, db.close)
            self._local.holder = holder
            self._holders.add(holder)
        return holder.db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _read_value(self, db: sqlite3.Connection, key: str) -> bytes | None:
        row = db.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    def _write_value(self, db: sqlite3.Connection, key: str, value: bytes, ttl: float | None) -> None:
        expires = None
        if ttl is not None:
            expires = time.time() + ttl
            self._ttl_writes += 1
            if self._ttl_writes % _SWEEP_EVERY == 0:
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

    def pop(self, key: str) -> bytes | None:
        row = self._db().execute("DELETE FROM kv WHERE key = ? RETURNING value, expires", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

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

    def incr(self, key: str, amount: int = 1) -> int:
        return int(self.update(key, lambda old: str(int(old or b"0") + amount).encode()))

    def update(self, key: str, func: Callable[[bytes | None], bytes]) -> bytes:
        with self._transaction() as db:
            value = func(self._read_value(db, key))
            self._write_value(db, key, value, None)
            return value

    def write(self, writes: Writes, guard: Guard | None = None) -> tuple[bool, Records]:
        with self._transaction() as db:
            if guard is not None:
                # The transaction holds the write lock: the guard cannot change before COMMIT.
                holds, unseen = self._check(db, guard)
                if not holds:
                    return False, unseen
            for key, value, ttl in writes.sets:
                self._write_value(db, key, value, ttl)
            for key, duration, alpha in writes.observes:
                db.execute(
                    "INSERT INTO timings (key, count, total, mean) VALUES (?, 1, ?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET count = count + 1, total = total + excluded.total, mean = ? * excluded.mean + ? * mean",
                    (key, duration, float(duration), alpha, 1 - alpha),
                )
        return True, []

    def observed(self, key: str) -> tuple[int, int, float] | None:
        row = self._db().execute("SELECT count, total, mean FROM timings WHERE key = ?", (key,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), float(row[2]))

    def append(self, log: str, record: bytes) -> int:
        # One statement, so one transaction that takes the write lock before it reads the head
        # (as BEGIN IMMEDIATE would, without its two extra round trips); the trigger moves the
        # head, which outlives trimmed records.
        (seq,) = self._db().execute(
            "INSERT INTO log (name, seq, record) "
            "VALUES (?1, COALESCE((SELECT seq FROM heads WHERE name = ?1), 0) + 1, ?2) RETURNING seq",
            (log, record),
        ).fetchone()
        return int(seq)

    def append_at(self, record: bytes, guard: Guard) -> tuple[int | None, Records]:
        # One statement, atomic like append; it writes no row when the guard fails.
        row = (
            self._db()
            .execute(
                "INSERT INTO log (name, seq, record) SELECT ?1, head + 1, ?2 "
                "FROM (SELECT COALESCE((SELECT seq FROM heads WHERE name = ?1), 0) AS head) "
                "WHERE (?3 IS NULL OR head = ?3) "
                f"AND EXISTS (SELECT 1 FROM kv WHERE key = ?4 AND value = ?5 AND {_LIVE.replace('?', '?6')}) "
                "RETURNING seq",
                (guard.log, record, guard.head, guard.key, guard.value, time.time()),
            )
            .fetchone()
        )
        if row is not None:
            return int(row[0]), []
        # Why not: what the guard finds now (as good as then, to a writer that decides again).
        return None, self._check(self._db(), guard)[1]

    def _check(self, db: sqlite3.Connection, guard: Guard) -> tuple[bool, Records]:
        value, head = db.execute(
            f"SELECT (SELECT value FROM kv WHERE key = ?1 AND {_LIVE.replace('?', '?3')}), "
            "(SELECT seq FROM heads WHERE name = ?2)",
            (guard.key, guard.log, time.time()),
        ).fetchone()
        return guard.check(None if value is None else bytes(value), head or 0, self.read)

    def read(self, log: str, after: int = 0) -> list[tuple[int, bytes]]:
        rows = self._db().execute(
            "SELECT seq, record FROM log WHERE name = ? AND seq > ? ORDER BY seq", (log, after)
        )
        return [(int(seq), bytes(record)) for seq, record in rows]

    def trim(self, log: str, before: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM log WHERE name = ? AND seq < ?", (log, before))

    def delete_log(self, log: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM log WHERE name = ?", (log,))
            db.execute("DELETE FROM heads WHERE name = ?", (log,))

    # --- messages: a table every process of the machine reads ---------------------------------

    def publish(self, channel: str, message: bytes) -> None:
        db = self._db()
        db.execute(
            "INSERT INTO messages (channel, message, created) VALUES (?, ?, ?)", (channel, message, time.time())
        )
        self._published += 1
        if self._published % _SWEEP_EVERY == 0:
            db.execute("DELETE FROM messages WHERE created < ?", (time.time() - _MESSAGE_SECONDS,))

    def listen(self, channel: str, callback: Callable[[bytes], None]) -> Callable[[], None]:
        listener = uuid.uuid4().hex
        stopped = threading.Event()
        db = self._db()
        (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()
        db.execute("INSERT INTO listeners (id, channel, seen) VALUES (?, ?, ?)", (listener, channel, time.time()))

        def poll(last: int) -> None:
            db = self._db()
            alive = 0.0
            while not stopped.wait(_POLL_SECONDS):
                rows = db.execute(
                    "SELECT id, message FROM messages WHERE channel = ? AND id > ? ORDER BY id", (channel, last)
                ).fetchall()
                for _, message in rows:
                    callback(bytes(message))
                if rows:
                    last = rows[-1][0]
                if time.monotonic() - alive > 1.0:
                    alive = time.monotonic()
                    db.execute("UPDATE listeners SET seen = ? WHERE id = ?", (time.time(), listener))
            db.execute("DELETE FROM listeners WHERE id = ?", (listener,))

        thread = threading.Thread(target=poll, args=(int(last),), name=f"river-ml-{channel}", daemon=True)
        thread.start()

        def stop() -> None:
            stopped.set()
            # The listener itself may stop listening (its last stream overflowed): no join then.
            if threading.current_thread() is not thread:
                thread.join(timeout=5)

        return stop

    def has_listeners(self, channel: str) -> bool:
        return self._listening(channel)

    def _ask_listeners(self, channel: str) -> bool:
        row = self._db().execute(
            "SELECT 1 FROM listeners WHERE channel = ? AND seen > ? LIMIT 1",
            (channel, time.time() - _LISTENER_SECONDS),
        ).fetchone()
        return row is not None

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        # flock on a fresh descriptor excludes other threads of this process as well as other
        # processes, and the kernel releases it when a holder dies.
        path = self.lock_dir / hashlib.sha256(name.encode()).hexdigest()
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

    def close(self) -> None:
        for holder in list(self._holders):
            if holder.pid == os.getpid():  # the parent's connections are the parent's to close
                with contextlib.suppress(sqlite3.Error):
                    holder.db.close()
        self._holders.clear()
        self._local = threading.local()


class _Connection:
    """One thread's connection, with the process that opened it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pid = os.getpid()

"""The shelve backend: the embedded default, one file on the local disk.

It keeps Python's ``shelve`` role (a persistent dictionary in one file next to the app) but
stores its data in SQLite, the format ``dbm`` itself defaults to since Python 3.13. Unlike the
``dbm.dumb`` and ``gdbm`` files behind older shelves, an SQLite file is safe to share between
the processes of one machine (gunicorn workers, a CLI next to a server) and every write is
committed to the write-ahead log before the call returns, so a process killed with SIGKILL
loses nothing it acknowledged. Messages for the streams go through a table of the same file,
which a listener thread in each process polls, so every stream of the machine sees every event.

When the file cannot be used (read-only, its disk full or failing, locked by another writer
for longer than :data:`_BUSY_SECONDS`, damaged, its folder removed) every call raises
:class:`~flask_river_ml.errors.StoreUnavailable` and the connection is dropped; the next call
opens a new one, so the store works again once the file does, without a restart. Each call
also checks that the path still names the file its connection has open: a connection to a
removed or replaced file would go on writing to a file nobody can open again, and lose it
all. A removed file (in a folder still there) is therefore started afresh, empty; while the
folder itself is gone, the store is unavailable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import StoreUnavailable
from .base import Backend, Change, Guard, ListenerCheck, Outcome, Records
from .local import commit_in

logger = logging.getLogger("flask_river_ml.storage")

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
#: How long a write waits for another one's lock on the file before the store counts as
#: unavailable: far longer than any write takes, short enough that a request fails rather
#: than hangs (and a sync worker is not killed for a timeout).
_BUSY_SECONDS = 5.0
#: SQLite's primary result codes that mean the file, not the statement, failed: busy and
#: locked, out of memory, read-only, I/O error, damaged, full, cannot be opened, a locking
#: protocol error, not a database, access denied.
_FILE_FAILURES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26, 3})
_BUSY = frozenset({5, 6})
#: What the file system answers when the store's folder or file is gone, read-only or full.
_OS_FAILURES = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO}
)


class ShelveBackend(Backend):
    """One SQLite database in WAL mode, one connection per thread and process.

    ``path`` is the file stem from ``RIVER_ML_SHELVE_PATH``: the data lives in
    ``<path>.sqlite3`` and the lock files in ``<path>.locks/``.
    """

    name = "shelve"
    schemes = ("sqlite",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(path)}.sqlite3")
        self._file = os.fspath(self.path)  # checked on every call: no Path conversion then
        self.lock_dir = Path(f"{os.fspath(path)}.locks")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._ttl_writes = 0
        self._published = 0
        self._listening = ListenerCheck(self._ask_listeners)
        #: The device and inode of the file this process opened last.
        self._known: tuple[int, int] | None = None
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

    @property
    def description(self) -> str:
        """The store as its failures name it (its file's name: the folder is nobody's business)."""
        return f"shelve store ({self.path.name})"

    def _identity(self) -> tuple[int, int]:
        """The device and inode of the file at :attr:`path`; (0, 0) when there is none yet.
        FileNotFoundError while its folder is gone."""
        try:
            found = os.stat(self._file)
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise
            return 0, 0
        return found.st_dev, found.st_ino

    def _writable(self) -> bool:
        """Whether this process may write the file and its write-ahead log (a connection
        opened while it may not is read-only for good, and is replaced once it may)."""
        wal = Path(f"{self.path}-wal")
        return os.access(self.path, os.W_OK) and (not wal.exists() or os.access(wal, os.W_OK))

    def _db(self) -> sqlite3.Connection:
        # A connection must not cross a fork (gunicorn --preload), hence the pid check; nor
        # outlive its file (removed or replaced), hence the identity check on every use.
        holder = getattr(self._local, "holder", None)
        if (
            holder is None
            or holder.pid != os.getpid()
            or holder.identity != self._identity()
            or (not holder.writable and self._writable())
        ):
            holder = self._open()
        return holder.db

    def _open(self) -> _Connection:
        """A new connection for this thread, on the file now at :attr:`path` (created, with
        the schema, when there is none)."""
        self._drop()
        self._identity()  # the folder must be there: never create it again behind the operator
        db = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only a power cut can lose the tail.
            db.execute("PRAGMA synchronous=NORMAL")
            identity = self._identity()
            if identity != self._known and self._known is not None:
                logger.warning("The %s was removed or replaced; the file now there is used.", self.description)
            self._known = identity
            # Asked on every connection, not once: a new file may have the inode of a removed one.
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'listeners'").fetchone() is None:
                db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        holder = _Connection(db, identity, self._writable())
        # The connection closes when its thread ends (servers start a thread per request).
        weakref.finalize(holder, db.close)
        self._local.holder = holder
        self._holders.add(holder)
        return holder

    def _drop(self) -> None:
        """Close this thread's connection, if any: the next call opens a new one."""
        holder = getattr(self._local, "holder", None)
        self._local.holder = None
        if holder is not None and holder.pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                holder.db.close()

    def unavailable(self, error: Exception) -> StoreUnavailable | None:
        if isinstance(error, sqlite3.Error):
            code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
            if code not in _FILE_FAILURES:
                return None
            reason = f"locked by another writer for over {_BUSY_SECONDS:g} s" if code in _BUSY else str(error)
        elif isinstance(error, OSError) and error.errno in _OS_FAILURES and self._owns(error.filename):
            # Not str(error): it quotes the full path.
            reason = os.strerror(error.errno or 0)
            if not self.path.parent.is_dir():
                reason = "its folder is gone"
        else:
            return None
        self._drop()
        return StoreUnavailable(f"The {self.description} cannot be used: {reason}; try again shortly.")

    def _owns(self, filename: object) -> bool:
        """Whether ``filename`` is one of the store's own files (not one a caller's code used)."""
        if not isinstance(filename, str | os.PathLike):
            return False
        path = Path(filename)
        return path == self.path or path == self.lock_dir or path.parent == self.lock_dir

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            # SQLite may have rolled back already (a full disk, an I/O error): then there is
            # nothing to undo, and the error to report is the first one.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
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
        return _View(self, self._db()).timing(key)

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
            alive, opened = 0.0, None
            while not stopped.wait(_POLL_SECONDS):
                try:
                    db = self._db()
                    if db is not opened:
                        # Opened again: on a new file (the old one removed), whose messages are
                        # numbered from 1 again and all new.
                        opened, alive = db, 0.0
                        if db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0] < last:
                            last = 0
                    rows = db.execute(
                        "SELECT id, message FROM messages WHERE channel = ? AND id > ? ORDER BY id", (channel, last)
                    ).fetchall()
                    if time.monotonic() - alive > 1.0:
                        alive = time.monotonic()
                        db.execute(
                            "INSERT INTO listeners (id, channel, seen) VALUES (?, ?, ?) "
                            "ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
                            (listener, channel, time.time()),
                        )
                except (sqlite3.Error, OSError) as error:
                    # The file cannot be read now: the listener lives on and reads it again.
                    if self._fault(error) is None:
                        logger.exception("The listener of the %s failed; it listens on.", self.description)
                    continue
                for _, message in rows:
                    callback(bytes(message))
                if rows:
                    last = rows[-1][0]
            with contextlib.suppress(sqlite3.Error, OSError):
                self._db().execute("DELETE FROM listeners WHERE id = ?", (listener,))

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

    def ping(self) -> None:
        self._db().execute("SELECT 1 FROM listeners LIMIT 1").fetchall()

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

    def close(self) -> None:
        for holder in list(self._holders):
            if holder.pid == os.getpid():  # the parent's connections are the parent's to close
                with contextlib.suppress(sqlite3.Error):
                    holder.db.close()
        self._holders.clear()
        self._local = threading.local()


class _Connection:
    """One thread's connection, with the process that opened it, the file it has open and
    whether that was writable then."""

    def __init__(self, db: sqlite3.Connection, identity: tuple[int, int], writable: bool) -> None:
        self.db = db
        self.pid = os.getpid()
        self.identity = identity
        self.writable = writable


def _records(db: sqlite3.Connection, log: str, after: int) -> Records:
    rows = db.execute("SELECT seq, record FROM log WHERE name = ? AND seq > ? ORDER BY seq", (log, after))
    return [(int(seq), bytes(record)) for seq, record in rows]


class _View:
    """The file's data inside one transaction (a :class:`~.local.View`)."""

    def __init__(self, store: ShelveBackend, db: sqlite3.Connection) -> None:
        self._store = store
        self._db = db

    def value(self, key: str) -> bytes | None:
        return self._store._read_value(self._db, key)

    def guarded(self, key: str, log: str) -> tuple[bytes | None, int]:
        value, head = self._db.execute(
            f"SELECT (SELECT value FROM kv WHERE key = ?1 AND {_LIVE.replace('?', '?3')}), "
            "(SELECT seq FROM heads WHERE name = ?2)",
            (key, log, time.time()),
        ).fetchone()
        return None if value is None else bytes(value), head or 0

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
            "VALUES (?1, COALESCE((SELECT seq FROM heads WHERE name = ?1), 0) + 1, ?2) RETURNING seq",
            (log, record),
        ).fetchone()
        return int(seq)

    def timing(self, key: str) -> tuple[int, int, float] | None:
        row = self._db.execute("SELECT count, total, mean FROM timings WHERE key = ?", (key,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), float(row[2]))

    def put_timing(self, key: str, timing: tuple[int, int, float]) -> None:
        self._db.execute("INSERT OR REPLACE INTO timings (key, count, total, mean) VALUES (?, ?, ?, ?)", (key, *timing))

"""The SQLite file under the shelve backend: its tables, a connection to it per thread and
process, and what its failures mean.

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
import logging
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from types import TracebackType

from ..errors import StoreUnavailable
from .base import Backend
from .sqlite_checkpoints import REQUEST_PAGES, Checkpoints

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
#: Expired keys, and old messages, are swept once every this many writes of them (of values
#: with a time to live, of messages).
SWEEP_EVERY = 1000
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


class SqliteFiles(Backend):
    """A backend on one SQLite database in WAL mode, one connection per thread and process,
    with a folder for lock files beside it (:class:`~.shelve.ShelveBackend` says where)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(path)}.sqlite3")
        self._file = os.fspath(self.path)  # checked on every call: no Path conversion then
        self.lock_dir = Path(f"{os.fspath(path)}.locks")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Connection] = weakref.WeakSet()
        #: The device and inode of the file this process opened last.
        self._known: tuple[int, int] | None = None
        self._checkpoints = Checkpoints(self.path)
        # A store dropped without close() stops its thread too.
        weakref.finalize(self, self._checkpoints.stop)

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
            # Checkpoints are this process's thread's to make (sqlite_checkpoints).
            db.execute(f"PRAGMA wal_autocheckpoint={REQUEST_PAGES}")
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
        self._checkpoints.start()
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

    def _transaction(self) -> _Transaction:
        """A write transaction that holds SQLite's write lock from its first statement."""
        return _Transaction(self._db())

    def ping(self) -> None:
        self._db().execute("SELECT 1 FROM listeners LIMIT 1").fetchall()

    def close(self) -> None:
        self._checkpoints.stop()
        for holder in list(self._holders):
            if holder.pid == os.getpid():  # the parent's connections are the parent's to close
                with contextlib.suppress(sqlite3.Error):
                    holder.db.close()
        self._holders.clear()
        self._local = threading.local()


class _Transaction(contextlib.AbstractContextManager[sqlite3.Connection]):
    """``BEGIN IMMEDIATE`` on entry, ``COMMIT`` on a clean exit, ``ROLLBACK`` on an error.

    A class rather than a generator: every learn and predict commits in one, and a
    generator's context costs several times more to enter and leave."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            # SQLite may have rolled back already (a full disk, an I/O error): then there is
            # nothing to undo, and the error to report is the first one.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")


class _Connection:
    """One thread's connection, with the process that opened it, the file it has open and
    whether that was writable then."""

    def __init__(self, db: sqlite3.Connection, identity: tuple[int, int], writable: bool) -> None:
        self.db = db
        self.pid = os.getpid()
        self.identity = identity
        self.writable = writable

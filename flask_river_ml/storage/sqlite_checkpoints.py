"""Checkpoints of the shelve store's write-ahead log, made on a thread of their own.

SQLite appends every commit to the file's write-ahead log; a *checkpoint* copies the log back
into the database and syncs both to disk. By default SQLite makes it inside the commit that
takes the log past 1000 pages: every few hundred learns, one request also copies the pages
and waits for two disk syncs. Each process instead checkpoints on a thread every
:data:`EVERY_SECONDS`, while its requests go on: SQLite releases the GIL while it works, and
a passive checkpoint never holds up a writer. A commit is as durable as before (it is in the
log when it returns; a checkpoint only moves it). The requests' own connections still
checkpoint once the log passes :data:`REQUEST_PAGES`, should this thread fall behind.

The thread has a connection of its own that never creates the file: a store whose file is
gone is made again by the next request, as before, not by a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

#: How often a process checkpoints its store's log.
EVERY_SECONDS = 0.25
#: The size of the log, in pages, past which a request's own commit checkpoints it.
REQUEST_PAGES = 10_000


class Checkpoints:
    """The checkpoints of one SQLite file, made by a thread of this process."""

    def __init__(self, path: Path) -> None:
        self._path = path.absolute()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def start(self) -> None:
        """Checkpoint from now on in this process; once per process (a forked worker has no
        thread of its parent's, and starts its own)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=_checkpoint, args=(self._path, self._stopped), name="river-ml-checkpoints", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop checkpointing and close the thread's connection (the store is closed, or
        gone): the file may then be moved, its log complete in it once the last connection
        closes."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._pid = 0


def _checkpoint(path: Path, stopped: threading.Event) -> None:
    """Checkpoint the file at ``path`` every :data:`EVERY_SECONDS` until ``stopped``.

    A checkpoint that fails (the file gone, locked, unreadable) changes nothing, and the next
    one, or a request's commit past :data:`REQUEST_PAGES`, makes it: failures are the
    requests' to report, and this thread only opens its connection again.
    """
    # mode=rw: a file that is not there is not created.
    uri = path.as_uri() + "?mode=rw"
    db: sqlite3.Connection | None = None
    opened: tuple[int, int] | None = None
    while not stopped.wait(EVERY_SECONDS):
        try:
            found = os.stat(path)
            if db is None or opened != (found.st_dev, found.st_ino):
                # The file was replaced: its log is the new file's to checkpoint.
                _close(db)
                db, opened = sqlite3.connect(uri, uri=True, timeout=0), (found.st_dev, found.st_ino)
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (OSError, sqlite3.Error):
            _close(db)
            db, opened = None, None
    _close(db)


def _close(db: sqlite3.Connection | None) -> None:
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()

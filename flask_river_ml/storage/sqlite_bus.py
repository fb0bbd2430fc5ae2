"""The message bus of the shelve backend: a table of its SQLite file that every process of
the machine reads.

A message is a row of ``messages``, kept for :data:`_MESSAGE_SECONDS` for late readers; each
listener is a thread that polls the table for its channel's new rows and says in
``listeners`` that it is alive, so a publisher knows whether anyone on the machine listens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable

from .base import ListenerCheck
from .sqlite_files import SWEEP_EVERY, SqliteFiles

logger = logging.getLogger("flask_river_ml.storage")

#: How often a listener looks for new messages, and how long a message is kept for late readers.
_POLL_SECONDS, _MESSAGE_SECONDS = 0.05, 60.0
#: A listener that has not said it is alive for this long (its process died) counts no more.
_LISTENER_SECONDS = 5.0


class SqliteBus(SqliteFiles):
    """Messages to every process that has the SQLite file open, through its tables."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._published = 0
        self._listening = ListenerCheck(self._ask_listeners)

    def publish(self, channel: str, message: bytes) -> None:
        db = self._db()
        db.execute("INSERT INTO messages (channel, message, created) VALUES (?, ?, ?)", (channel, message, time.time()))
        self._published += 1
        if self._published % SWEEP_EVERY == 0:
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

    def _ask_listeners(self, channel: str) -> bool:
        row = (
            self._db()
            .execute(
                "SELECT 1 FROM listeners WHERE channel = ? AND seen > ? LIMIT 1",
                (channel, time.time() - _LISTENER_SECONDS),
            )
            .fetchone()
        )
        return row is not None

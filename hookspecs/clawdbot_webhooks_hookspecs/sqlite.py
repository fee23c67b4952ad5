"""An SQLite file in WAL mode written from the event loop's own thread, as the runtime writes
its store and the local gateway its log; a plugin that keeps a file of its own can do the
same. Since 1.8.

With ``synchronous`` NORMAL or OFF in WAL mode a commit does not wait for the disk, so a short
transaction can run on the event loop's thread: cheaper than handing it to a thread and back.
``LoopConnection`` is such a connection. It never waits for a lock and never checkpoints: when
the file is busy (another connection writing) or the work raises, nothing of it is kept and
the caller hands the work to a thread of its own, which waits for the lock and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The ``synchronous`` settings under which a commit in WAL mode does not wait for the disk.
NO_WAIT_SYNCHRONOUS = frozenset({"NORMAL", "OFF", "0", "1"})

# How the runtime's store and the local gateway's log count their writes toward the next
# checkpoint, which their writer threads make between batches (SQLite's own is switched off:
# it would run inside a commit somebody waits for). Since 1.9.
#: A checkpoint once the commits since the last one count this many rows.
CHECKPOINT_ROWS = 1000
#: A commit writes the pages it touched, however few its rows: at a row or two a commit,
#: pages rather than rows fill the WAL, so each commit counts as this many rows more.
COMMIT_ROWS = 3
#: A large write counts as a row per this many bytes (``rows_for``): large bodies, payloads,
#: prompts and replies neither grow the WAL far past its usual size nor hold the next writes
#: up long while it is copied.
ROW_BYTES = 16384


def rows_for(size: int) -> int:
    """How many rows a write of ``size`` bytes counts as toward the next checkpoint."""
    return 1 + size // ROW_BYTES


def switch_to_wal(conn: sqlite3.Connection, seconds: float = 5.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out other connections that open the same new file
    at the same moment (processes starting together): SQLite answers "database is locked" at
    once there instead of waiting on the busy timeout, so the wait is done here."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class LoopConnection:
    """A connection for the event loop's thread to commit short transactions on."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def open(cls, path: Path, synchronous: str = "NORMAL") -> LoopConnection | None:
        """The connection to a file already in WAL mode; None where its commits would wait
        for the disk (``synchronous`` FULL or EXTRA, or no WAL) or the file does not open."""
        if synchronous.upper() not in NO_WAIT_SYNCHRONOUS:
            return None
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return cls(conn)
        except sqlite3.Error as exc:
            log.debug("%s is written from a thread only: %r", path, exc)
        if conn is not None:
            conn.close()  # not left open for the collector to find
        return None

    def commit(self, work: Callable[[sqlite3.Connection], T]) -> T | None:
        """``work(connection)`` in one transaction: its answer once committed, or None when
        nothing of it was kept (the file busy, ``work`` raised, the connection closed), so
        ``work`` should not answer None itself."""
        conn = self._conn
        if conn is None:
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
            answer = work(conn)
            conn.execute("COMMIT")
        except Exception:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # stuck in a transaction: no longer to be used
                    self.close()
            return None
        return answer

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

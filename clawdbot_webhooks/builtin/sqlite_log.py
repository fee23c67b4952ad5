"""An SQLite file written by one thread, with group commit: operations that wait together share
one transaction and one commit, so many agent runs at once cost one disk flush, not one each.

An operation that raises is undone alone and its error goes back to its caller only: the
batch is then run again with a savepoint per operation (only then: savepoints cost two
statements per operation). The thread is handed a turn of the event loop's operations at a
time, and the loop is woken once per batch: neither once per operation.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: A batch takes in further turns' operations up to this many: a transaction stays short.
MAX_BATCH = 256
#: The thread checkpoints once its commits since the last count this many, each counting as
#: its operations plus ``COMMIT_ROWS`` (a commit writes a few pages however few its rows).
CHECKPOINT_ROWS = 1000
COMMIT_ROWS = 3

_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]


class LogWriter:
    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        #: Operations go to the thread a turn of the event loop at a time: one hand-over (and
        #: one wake-up of the thread) per turn, not per operation.
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._turn: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(ready,), name=f"sqlite-log {self.path.name}", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None:
            return
        self._hand_over()
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn(connection)`` in the writer thread, committed before the future is set."""
        assert self._loop is not None, "open() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._turn.append((fn, future))
        if len(self._turn) == 1:
            self._loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        if self._turn:
            self._jobs.put(self._turn)
            self._turn = []

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")  # a reader (the messages command) may hold it
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints between batches, not inside the commit that fills the WAL (which the
        # batch's callers would wait for), as the store's writer does.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.executescript(self._schema)
        return conn

    def _work(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except Exception as exc:
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        written = 0  # since the last checkpoint (``CHECKPOINT_ROWS``)
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = list(first)
                while len(batch) < MAX_BATCH:
                    try:
                        jobs = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if jobs is None:
                        self._jobs.put(None)  # finish this batch, then stop
                        break
                    batch.extend(jobs)
                self._commit(conn, batch, loop)
                written += len(batch) + COMMIT_ROWS
                if written >= CHECKPOINT_ROWS:
                    written = 0
                    _checkpoint(conn)
        finally:
            conn.close()

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Job], loop: asyncio.AbstractEventLoop
    ) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = [(future, fn(conn), None) for fn, future in batch]
            conn.execute("COMMIT")
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = _one_by_one(conn, batch)
        loop.call_soon_threadsafe(_settle_all, outcomes)


def _one_by_one(
    conn: sqlite3.Connection, batch: list[_Job]
) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
    """The batch again, each operation in a savepoint: one that raises is undone alone."""
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for fn, future in batch:
            conn.execute("SAVEPOINT op")
            try:
                outcomes.append((future, fn(conn), None))
                conn.execute("RELEASE op")
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((future, None, exc))
        conn.execute("COMMIT")
    except Exception as exc:  # the commit itself failed: nothing of the batch is stored
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        outcomes = [(future, None, exc) for _, future in batch]
    return outcomes


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the file, then make the write that lets the WAL start over, whose
    commit syncs the WAL's new header: here, between batches, not in a batch's commit."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"PRAGMA user_version={conn.execute('PRAGMA user_version').fetchone()[0]}")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:  # the next batch's commit reports a file that is unwell
        log.warning("checkpoint of the message log failed: %r", exc)
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in outcomes:
        _settle(future, value, error)


def _switch_to_wal(conn: sqlite3.Connection, seconds: float = 5.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out another process opening the same new file at
    the same moment: SQLite answers "database is locked" at once there, without waiting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)

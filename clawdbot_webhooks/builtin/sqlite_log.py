"""An SQLite file with group commit: operations asked for together share one transaction and
one commit, so many agent runs at once cost one disk flush, not one each.

The operations asked for in one turn of the event loop are committed together at its next
turn, on a connection the loop owns, while the writer thread has nothing queued: with
``synchronous=NORMAL`` in WAL a commit does not wait for the disk, and no hand-over to a thread
and back is cheaper than any. That connection never waits for a lock: when the file is busy
(another process writing) or an operation raises, the batch goes to the writer thread, which
waits for the lock and runs a failed batch again with a savepoint per operation (only then:
savepoints cost two statements per operation), so an operation that raises is undone alone and
its error goes back to its caller only. The thread also checkpoints, between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from clawdbot_webhooks_hookspecs.sqlite import (
    CHECKPOINT_ROWS,
    COMMIT_ROWS,
    LoopConnection,
    switch_to_wal,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

#: A batch takes in further turns' operations up to this many: a transaction stays short.
MAX_BATCH = 256

#: An operation, its caller's future, and how many rows it counts as.
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], int]
#: Queued for the thread when the loop's connection has written ``CHECKPOINT_ROWS``.
_CHECKPOINT: list[_Job] = []


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
        #: The loop's connection (None: every batch goes to the thread).
        self._fast: LoopConnection | None = None
        self._fast_rows = 0  # counted as the thread counts its own (``COMMIT_ROWS``)
        #: Hand-overs put into the queue (counted on the loop) and done by the thread
        #: (counted there): equal when the thread has nothing to do.
        self._queued = 0
        self._finished = 0

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(ready,), name=f"sqlite-log {self.path.name}", daemon=True
        )
        self._thread.start()
        await ready
        self._fast = LoopConnection.open(self.path)

    async def close(self) -> None:
        if self._thread is None:
            return
        if self._turn:
            self._put(self._turn)
            self._turn = []
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def run(self, fn: Callable[[sqlite3.Connection], T], rows: int = 1) -> asyncio.Future[T]:
        """Run ``fn(connection)``, committed before the future is set: at the loop's next turn
        on its own connection, or in the writer thread. ``rows``: how many rows it counts as
        toward the next checkpoint (``rows_for`` its texts' size)."""
        assert self._loop is not None, "open() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._turn.append((fn, future, rows))
        if len(self._turn) == 1:
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """The loop's turn: commit what the last turn asked for, here or in the thread (in
        the order asked for: here only while the thread has nothing to do)."""
        batch, self._turn = self._turn, []
        if not batch:
            return
        conn = self._fast
        if conn is None or self._queued != self._finished or not self._commit_here(conn, batch):
            self._put(batch)

    def _commit_here(self, conn: LoopConnection, batch: list[_Job]) -> bool:
        # Busy, or an operation raised: nothing is kept, and the thread sorts it out.
        results = conn.commit(lambda c: [(future, fn(c)) for fn, future, _ in batch])
        if results is None:
            return False
        self._fast_rows += _rows(batch) + COMMIT_ROWS
        if self._fast_rows >= CHECKPOINT_ROWS:
            self._fast_rows = 0
            self._put(_CHECKPOINT)
        for future, value in results:
            if not future.done():  # the caller may have given up waiting
                future.set_result(value)
        return True

    def _put(self, jobs: list[_Job]) -> None:
        self._queued += 1
        self._jobs.put(jobs)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")  # a reader (the messages command) may hold it
        switch_to_wal(conn)
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
                batch, taken, checkpoint = list(first), 1, first is _CHECKPOINT
                while len(batch) < MAX_BATCH and not checkpoint:
                    try:
                        jobs = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if jobs is None:
                        self._jobs.put(None)  # finish this batch, then stop
                        break
                    batch.extend(jobs)
                    taken += 1
                    checkpoint = jobs is _CHECKPOINT
                if batch:
                    self._commit(conn, batch, loop)
                    written += _rows(batch) + COMMIT_ROWS
                if checkpoint or written >= CHECKPOINT_ROWS:
                    written = 0
                    _checkpoint(conn)
                self._finished += taken
        finally:
            conn.close()

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Job], loop: asyncio.AbstractEventLoop
    ) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = [(future, fn(conn), None) for fn, future, _ in batch]
            conn.execute("COMMIT")
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = _one_by_one(conn, batch)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_all, outcomes)


def _one_by_one(
    conn: sqlite3.Connection, batch: list[_Job]
) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
    """The batch again, each operation in a savepoint: one that raises is undone alone."""
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for fn, future, _ in batch:
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
        outcomes = [(future, None, exc) for _, future, _ in batch]
    return outcomes


def _rows(batch: list[_Job]) -> int:
    return sum(rows for _, _, rows in batch)


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


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)

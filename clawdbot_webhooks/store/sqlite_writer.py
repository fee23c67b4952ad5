"""Group commit for SQLite: one connection, one writer thread, batched transactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, cast

from clawdbot_webhooks_hookspecs.sqlite import (
    CHECKPOINT_ROWS,
    COMMIT_ROWS,
    LoopConnection,
    switch_to_wal,
)

from clawdbot_webhooks.store.protocol import StoreUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

# Identity adapters for bytes and None, which sqlite3 looks up before binding them: a hit is
# cheaper than a miss (bench/README.md). Nothing stored changes, here or elsewhere.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))  # {}.get(None) is None


class Rows(NamedTuple):
    """A write given as statements and their parameters rather than a function, so that the
    writer can run a run of them with one ``executemany`` per statement. ``result`` is what
    the caller gets.
    Should the batch fail, each request runs again alone; ``fallback`` then runs instead of the
    statements when given (an insert that has to look at a conflict, say). ``on_loop``: short
    enough to be committed on the event loop's thread (``SQLiteWriter``). ``rows``: how many
    rows it counts as toward the next checkpoint (``CHECKPOINT_ROWS``), a large body by its
    size (``ROW_BYTES``)."""

    #: The statements (best a module constant: runs are found by comparing these) and the
    #: parameters of each.
    sql: tuple[str, ...]
    params: tuple[Sequence[Any], ...]
    result: Any = None
    fallback: Callable[[sqlite3.Connection], Any] | None = None
    on_loop: bool = False
    rows: int = 1

    def run(self, conn: sqlite3.Connection) -> Any:
        if self.fallback is not None:
            return self.fallback(conn)
        execute_all(conn, self.sql, self.params)
        return self.result


class Weighed(Generic[T]):
    """A write given as a function that counts as ``rows`` rows toward the next checkpoint
    (a function alone counts as one): one that writes many rows, or large ones."""

    __slots__ = ("fn", "rows")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], rows: int) -> None:
        self.fn = fn
        self.rows = rows

    def __call__(self, conn: sqlite3.Connection) -> T:
        return self.fn(conn)


def execute_all(
    conn: sqlite3.Connection, statements: Sequence[str], params: Sequence[Sequence[Any]]
) -> None:
    """Each statement with its parameters, in order."""
    for sql, values in zip(statements, params, strict=True):
        conn.execute(sql, values)


Request = Callable[[sqlite3.Connection], Any] | Rows


class Unwatched(NamedTuple):
    """Stands where a future would for a write nobody waits for (``SQLiteWriter._send``):
    names what it was, for the log line should it fail."""

    what: str


class SQLiteWriter:
    """One SQLite connection (WAL) in one writer thread that group-commits queued requests,
    and a second one on the event loop's thread for short writes (``Rows.on_loop``).

    ``await self._do(fn)`` runs ``fn(conn)`` in that thread; whatever requests are queued
    together share one transaction, and each future resolves only after its transaction is
    committed. The event loop is woken once per batch, not once per request. ``_do`` returns
    the future and queues at once, so a caller that need not wait for the commit can go on
    (and watch the future instead).

    Short writes asked for in one turn of the event loop are committed together at its next
    turn on the loop's own connection, with no thread in between, but only while the writer
    thread has nothing to do (so writes commit in the order asked for) and only where a
    commit does not wait for the disk (``synchronous`` NORMAL or OFF in WAL: a commit is then
    as safe against a killed process as the writer's). That connection never waits for a
    lock: when the file is busy, or anything fails, the batch goes to the writer thread,
    which waits and reports as it always did. Checkpoints run in the writer thread.
    """

    #: How many queued requests one transaction takes at most.
    BATCH = 512

    def __init__(self, path: Path, schema: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.schema = schema
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[tuple[Request, Any] | None]
        self._queue = queue.SimpleQueue()
        #: Writes nobody waits for (``_send``), held back until the next write somebody
        #: does wait for, or ``LATER_SECONDS``: they then share its transaction.
        self._later: list[tuple[Request, Any]] = []
        self._later_timer: asyncio.TimerHandle | None = None
        #: Writes for the loop's connection, committed at the loop's next turn.
        self._tick: list[tuple[Request, Any]] = []
        self._flush_due = False
        #: The loop's connection; None where commits wait for the disk, or it cannot open.
        self._fast: LoopConnection | None = None
        #: Rows the loop's connection wrote since the last checkpoint began.
        self._fast_rows = 0
        self._checkpointing = False
        #: Requests put into the queue (counted on the loop) and finished by the writer
        #: thread (counted there): equal when the thread has nothing to do.
        self._queued = 0
        self._finished = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = True

    # -- lifecycle

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run,
            args=(loop, ready),
            daemon=True,
            name="sqlite-writer",
        )
        self._thread.start()
        await ready
        self._fast = LoopConnection.open(self.path, self.synchronous)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        self._tick.extend(self._later)
        self._later.clear()
        self._hand_over()
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        switch_to_wal(conn, BUSY_SECONDS)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        # SQLite's own checkpoint would run inside the commit that fills the WAL, while the
        # requests of that batch wait for it; this thread checkpoints between batches instead.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.executescript(self.schema)
        return conn

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        stop = False
        written = 0  # by this thread's commits since its last checkpoint (``COMMIT_ROWS``)
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.BATCH and not _is_checkpoint(batch[-1][0]):
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            # A checkpoint runs outside any transaction, after the writes queued before it.
            step = batch.pop()[0] if _is_checkpoint(batch[-1][0]) else None
            outcomes = _apply(conn, batch) if batch else []
            if batch:
                written += _rows(batch) + COMMIT_ROWS
            if step is _copy_wal:
                written = 0
                _copy_wal(conn)
                with contextlib.suppress(RuntimeError):  # the loop is closed: so are we
                    loop.call_soon_threadsafe(self._after_copy)
            elif step is _restart_wal:
                _restart_wal(conn)
            # The copy is not counted: the loop's connection goes on writing meanwhile.
            self._finished += len(batch) + (step is _restart_wal)
            # One wake-up of the event loop per batch, not one per request, and none for a
            # batch of writes nobody waits for that all went well.
            if any(error is not None or not isinstance(f, Unwatched) for f, _, error in outcomes):
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle_all, outcomes)
            if written >= CHECKPOINT_ROWS:  # after the batch is settled: nobody waits for it
                written = 0
                _restart_wal(conn)
        conn.close()

    def _send(self, request: Rows, what: str) -> None:
        """A write nobody waits for; should it fail, the failure is logged as ``what``.

        It is held back until the next write somebody waits for, and goes into the queue just
        before it, so the two share a transaction and the pages they both touch are written
        once (under load, an outcome and the next deliveries' inserts); when no such write
        comes, it goes on its own after ``LATER_SECONDS``. Either way it is written in the
        order it was asked for."""
        if self._closed:
            log.error("%s could not be written: %s is closed", what, self.path.name)
            return
        assert self._loop is not None  # set by open(); closed until then
        self._later.append((request, Unwatched(what)))
        if self._later_timer is None:
            self._later_timer = self._loop.call_later(LATER_SECONDS, self._on_later_timer)

    def _on_later_timer(self) -> None:
        # Not cancelled when a waited-for write takes the held ones first (that would cost a
        # timer per request under load): firing with nothing held does nothing.
        self._later_timer = None
        self._release_later()

    def _release_later(self) -> None:
        self._tick.extend(self._later)
        self._later.clear()
        if self._fast is None:
            self._hand_over()
        elif not self._flush_due and self._tick:
            self._flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _put(self, item: tuple[Request, Any]) -> None:
        self._queued += 1
        self._queue.put(item)

    def _hand_over(self) -> None:
        """What waits for the loop's connection goes to the writer thread, in order."""
        for item in self._tick:
            self._put(item)
        self._tick.clear()

    def _flush(self) -> None:
        """The loop's turn: commit what this turn asked for, here or in the writer thread."""
        self._flush_due = False
        batch = self._tick
        if not batch:
            return
        self._tick = []
        conn = self._fast
        if conn is not None and self._queued == self._finished:
            rows = _loop_rows(batch)
            if rows and self._commit_here(conn, batch, rows):
                return
        for item in batch:
            self._put(item)

    def _commit_here(
        self, conn: LoopConnection, batch: list[tuple[Request, Any]], rows: int
    ) -> bool:
        # Busy, full, a conflict: nothing is kept, and the writer thread sorts it out.
        outcomes = conn.commit(lambda c: _run_grouped(c, batch))
        if outcomes is None:
            return False
        self._fast_rows += rows + COMMIT_ROWS
        if self._fast_rows >= CHECKPOINT_ROWS and not self._checkpointing:
            self._fast_rows = 0
            self._checkpointing = True
            self._queue.put((_copy_wal, Unwatched("a checkpoint")))  # not counted: see _run
        _settle_all(outcomes)
        return True

    def _after_copy(self) -> None:
        """After the copy, the rest: the loop's connection waits meanwhile (``_queued``)."""
        self._checkpointing = False
        if not self._closed:
            self._put((_restart_wal, Unwatched("a checkpoint")))

    def _do(self, fn: Callable[[sqlite3.Connection], T] | Rows) -> asyncio.Future[T]:
        if self._closed or self._loop is None:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            future.set_exception(StoreUnavailable(f"{self.path.name} is closed"))
            return future
        future = self._loop.create_future()
        if self._fast is not None and isinstance(fn, Rows) and fn.on_loop:
            self._tick.extend(self._later)
            self._later.clear()
            self._tick.append((fn, future))
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush)
            return future
        # Whatever was asked for before goes first.
        self._tick.extend(self._later)
        self._later.clear()
        self._hand_over()
        self._put((fn, future))
        return future


Outcome = tuple[Any, Any, BaseException | None]

#: How long a connection waits for a lock another connection holds.
BUSY_SECONDS = 5.0
#: How long a write nobody waits for is held back for one somebody waits for to go with.
LATER_SECONDS = 0.05
# Neither connection checkpoints by itself: after the loop's connection wrote
# ``CHECKPOINT_ROWS`` rows the writer thread does (``_copy_wal``, ``_restart_wal``), and after
# its own connection did (bench/README.md).


def _copy_wal(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database: the writer thread, between its transactions, while
    the loop's connection goes on writing."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("checkpoint of the SQLite WAL failed: %r", exc)


def _restart_wal(conn: sqlite3.Connection) -> None:
    """Copy what is left in the WAL (after ``_copy_wal``: what was written meanwhile, nobody
    else writing now) and, when all of it was copied, let the WAL start over rather than grow.
    The first write after that syncs the WAL's new header (even with synchronous NORMAL): it
    is made here, not in a commit somebody waits for."""
    try:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or frames != copied or frames <= 0:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version={version}")  # a write that changes nothing
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("checkpoint of the SQLite WAL failed: %r", exc)


def _loop_rows(batch: list[tuple[Request, Any]]) -> int:
    """How many rows a batch counts as (``Rows.rows``) when all of it may be committed on the
    loop's connection; 0 when not. (A loop: ``all`` or ``sum`` over a generator would resume
    it once per request.)"""
    rows = 0
    for request, _ in batch:
        if not (isinstance(request, Rows) and request.on_loop):
            return 0
        rows += request.rows
    return rows


def _rows(batch: list[tuple[Request, Any]]) -> int:
    """How many rows a batch counts as toward the next checkpoint: a function as one."""
    return sum(request.rows if isinstance(request, Rows | Weighed) else 1 for request, _ in batch)


def _is_checkpoint(request: object) -> bool:
    return request is _copy_wal or request is _restart_wal


def _apply(conn: sqlite3.Connection, batch: list[tuple[Request, Any]]) -> list[Outcome]:
    """Run a batch in one transaction. When a request fails, the batch is rolled back and run
    again with a savepoint per request, so one bad request cannot sink the others (savepoints
    only then: they are two statements more per request)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        outcomes = _run_grouped(conn, batch)
        conn.execute("COMMIT")
        return outcomes
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        request, future = batch[0]
        if len(batch) == 1 and not (isinstance(request, Rows) and request.fallback):
            return [(future, None, _failure(exc))]  # alone already: nothing else to try
    outcomes = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for request, future in batch:
            conn.execute("SAVEPOINT op")
            try:
                outcomes.append((future, _run_one(conn, request), None))
                conn.execute("RELEASE op")
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((future, None, _failure(exc)))
        conn.execute("COMMIT")
    except Exception as exc:  # the whole transaction failed: nobody's work is stored
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        failure = StoreUnavailable(f"database write failed: {exc}")
        outcomes = [(future, None, failure) for _, future in batch]
    return outcomes


def _run_one(conn: sqlite3.Connection, request: Request) -> Any:
    return request.run(conn) if isinstance(request, Rows) else request(conn)


def _run_grouped(conn: sqlite3.Connection, batch: list[tuple[Request, Any]]) -> list[Outcome]:
    """Run the batch in order, each run of ``Rows`` with the same statements as one
    ``executemany`` per statement. (Walked by index rather than with ``itertools.groupby``
    and generators: those cost a Python call or a resumption per request.)"""
    outcomes: list[Outcome] = []
    i, n = 0, len(batch)
    while i < n:
        request, future = batch[i]
        if not isinstance(request, Rows):  # a function, alone
            outcomes.append((future, request(conn), None))
            i += 1
            continue
        statements, j = request.sql, i + 1
        while j < n:
            following = batch[j][0]
            if not (isinstance(following, Rows) and following.sql == statements):
                break
            j += 1
        run: list[tuple[Rows, Any]] = batch[i:j]  # type: ignore[assignment]  # Rows, as checked
        for k, sql in enumerate(statements):
            conn.executemany(sql, [rows.params[k] for rows, _ in run])
        outcomes += [(future, rows.result, None) for rows, future in run]
        i = j
    return outcomes


def _failure(exc: Exception) -> Exception:
    """A request's own error goes back as it is; the database failing is StoreUnavailable."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    ):
        return StoreUnavailable(f"database write failed: {exc}")
    return exc


def _settle_all(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if error is None:  # the common case, without a call per request
            if not (isinstance(future, Unwatched) or future.done()):
                future.set_result(result)
        else:
            _settle(future, result, error)


def _settle(
    future: asyncio.Future[Any] | Unwatched, result: Any, error: BaseException | None
) -> None:
    if isinstance(future, Unwatched):
        if error is not None:
            log.error("%s could not be written: %r", future.what, error)
        return
    if future.done():  # the awaiting task was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

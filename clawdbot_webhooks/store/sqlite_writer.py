"""Group commit for SQLite: one connection, one writer thread, batched transactions."""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

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
    statements when given (an insert that has to look at a conflict, say)."""

    #: The statements (best a module constant: runs are found by comparing these) and the
    #: parameters of each.
    sql: tuple[str, ...]
    params: tuple[Sequence[Any], ...]
    result: Any = None
    fallback: Callable[[sqlite3.Connection], Any] | None = None

    def run(self, conn: sqlite3.Connection) -> Any:
        if self.fallback is not None:
            return self.fallback(conn)
        execute_all(conn, self.sql, self.params)
        return self.result


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
    """One SQLite connection (WAL) in one writer thread that group-commits queued requests.

    ``await self._do(fn)`` runs ``fn(conn)`` in that thread; whatever requests are queued
    together share one transaction, and each future resolves only after its transaction is
    committed. The event loop is woken once per batch, not once per request. ``_do`` returns
    the future and queues at once, so a caller that need not wait for the commit can go on
    (and watch the future instead).
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

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        self._release_later()
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        _switch_to_wal(conn)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
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
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            outcomes = _apply(conn, batch)
            # One wake-up of the event loop per batch, not one per request, and none for a
            # batch of writes nobody waits for that all went well.
            if any(error is not None or not isinstance(f, Unwatched) for f, _, error in outcomes):
                loop.call_soon_threadsafe(_settle_all, outcomes)
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
        for item in self._later:
            self._queue.put(item)
        self._later.clear()

    def _do(self, fn: Callable[[sqlite3.Connection], T] | Rows) -> asyncio.Future[T]:
        if self._closed or self._loop is None:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            future.set_exception(StoreUnavailable(f"{self.path.name} is closed"))
            return future
        future = self._loop.create_future()
        if self._later:
            self._release_later()
        self._queue.put((fn, future))
        return future


Outcome = tuple[Any, Any, BaseException | None]

#: How long a connection waits for a lock another connection holds.
BUSY_SECONDS = 5.0
#: How long a write nobody waits for is held back for one somebody waits for to go with.
LATER_SECONDS = 0.05


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out other connections that open the same new file
    at the same moment (two processes starting together): SQLite answers "database is locked"
    at once there instead of waiting on the busy timeout, so the wait is done here."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


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
    ``executemany`` per statement."""
    outcomes: list[Outcome] = []
    for statements, group in itertools.groupby(batch, key=_statements):
        if statements is None:  # functions, one by one
            outcomes.extend((future, _run_one(conn, fn), None) for fn, future in group)
            continue
        # Every one is Rows (the key says so); the check tells the type checker.
        run = [(rows, future) for rows, future in group if isinstance(rows, Rows)]
        for k, sql in enumerate(statements):
            conn.executemany(sql, [rows.params[k] for rows, _ in run])
        outcomes.extend((future, rows.result, None) for rows, future in run)
    return outcomes


def _statements(item: tuple[Request, Any]) -> tuple[str, ...] | None:
    request = item[0]
    return request.sql if isinstance(request, Rows) else None


def _failure(exc: Exception) -> Exception:
    """A request's own error goes back as it is; the database failing is StoreUnavailable."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    ):
        return StoreUnavailable(f"database write failed: {exc}")
    return exc


def _settle_all(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
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

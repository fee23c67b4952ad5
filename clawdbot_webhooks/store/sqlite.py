"""The store on SQLite: one process owns the file. One connection in one writer thread
commits whatever requests are queued together in a single transaction (group commit, see
``sqlite_writer``): a request's future resolves only after its transaction is committed,
which is what lets the server answer 202 only for deliveries that are on disk."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from clawdbot_webhooks_hookspecs.sqlite import rows_for

from clawdbot_webhooks import jsontext
from clawdbot_webhooks.store.queries import Dialect, Query
from clawdbot_webhooks.store.records import (
    Attempt,
    EventRecord,
    IncomingRecord,
    OutgoingOutcome,
    OutgoingRecord,
)
from clawdbot_webhooks.store.rows import (
    FINISH_OUTGOING,
    INBOX_COLUMNS,
    INSERT_EVENT,
    OUTBOX_COLUMNS,
    RECORD_ATTEMPT,
    attempt_params,
    finish_params,
    incoming_record,
    outcome_params,
    outgoing_record,
)
from clawdbot_webhooks.store.shared import SharedQueries
from clawdbot_webhooks.store.sqlite_schema import PROBE_WRITE, SQLITE_MIGRATIONS
from clawdbot_webhooks.store.sqlite_schema import migrate as upgrade_schema
from clawdbot_webhooks.store.sqlite_writer import Rows, SQLiteWriter, Weighed, execute_all

#: A new delivery: its row (pending, no attempts yet, leased) and its body.
#: Bodies up to this size stay in the inbox row: one insert instead of two, and the row
#: rewritten with each outcome stays small. Larger ones go to ``inbox_bodies`` (migration 2).
INLINE_BODY_BYTES = 2048
#: Deliveries up to this size are committed on the event loop's thread (``Rows.on_loop``),
#: larger ones in the writer thread: there, writing their pages holds up no other request
#: (bench/README.md).
LOOP_BODY_BYTES = 8192
_INBOX_ROW = (
    "INSERT INTO inbox (id, hook_id, received_at, content_type, headers, query, client_ip, "
    "session, dedup_key, lease_until, body, status, attempts, next_attempt_at, last_error, "
    "result) VALUES (?,?,?,?,?,?,?,?,?,?,?,'pending',0,0,NULL,NULL)"
)
#: A new delivery (pending, no attempts yet, leased), its body in the row or apart.
_ADD_INCOMING = (_INBOX_ROW,)
_ADD_INCOMING_APART = (_INBOX_ROW, "INSERT INTO inbox_bodies (id, body) VALUES (?, ?)")
_FINISH_INCOMING = (
    "UPDATE inbox SET status=?, attempts=?, result=?, last_error=?, next_attempt_at=?, "
    "lease_until=0, finished_at=?, message=COALESCE(?, message) WHERE id=?",
)
#: A failed attempt's outcome and its line in the delivery's history.
_FAIL_INCOMING = (*_FINISH_INCOMING, RECORD_ATTEMPT)
# Bodies up to INLINE_BODY_BYTES (and all of those stored before migration 2) are in
# inbox.body; larger ones in inbox_bodies.
_INBOX_COLUMNS = INBOX_COLUMNS.replace(
    "body,",
    "COALESCE((SELECT b.body FROM inbox_bodies b WHERE b.id = inbox.id), inbox.body),",
    1,
)
_ADD_OUTGOING = (
    "INSERT OR IGNORE INTO outbox (id, event_id, subscription_id, event_type, session, payload, "
    "created_at, status, attempts, next_attempt_at, last_error, causation, lease_until) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
#: A pending row of a lane that nobody holds: a later row of the lane waits behind it.
_UNLEASED_IN_LANE = (
    "SELECT 1 FROM outbox WHERE status='pending' AND subscription_id=? AND session=? "
    "AND lease_until<=? LIMIT 1"
)
_ADD_EVENT = (INSERT_EVENT,)
_OUTBOX_COLUMNS_O = ", ".join(f"o.{c.strip()}" for c in OUTBOX_COLUMNS.split(","))

SQLITE = Dialect(
    name="sqlite",
    tables="SELECT name FROM sqlite_master",
    inbox_columns=_INBOX_COLUMNS,
    greatest="MAX",
    free_lease="lease_until=0",
    # A list of ids travels as one JSON parameter: no limit on how many, one statement.
    in_ids="{} IN (SELECT value FROM json_each(?))",
    ids=json.dumps,
    bucket="CAST(finished_at / ? AS INTEGER)",
    side_tables=("inbox_bodies",),
)

T = TypeVar("T")


def _outcome_rows(params: tuple[Any, ...]) -> int:
    """How many rows an outcome (``finish_params``) counts as: its result and the message it
    sent by their size."""
    result, message = params[2], params[6]
    if result is None and message is None:
        return 1
    return rows_for(len(result or "") + len(message or ""))


def run_query(conn: sqlite3.Connection, query: Query[T]) -> T:
    """Run a shared query on this connection (in the writer thread)."""
    try:
        sql, args = next(query)
        while True:
            sql, args = query.send(conn.execute(sql, args).fetchall())
    except StopIteration as done:
        result: T = done.value
        return result


class SQLiteStore(SQLiteWriter, SharedQueries):
    """The store on SQLite in WAL mode (see ``SQLiteWriter`` for the group commit)."""

    #: One process owns a SQLite store: at start-up every lease is its own to take back.
    single_process = True
    dialect = SQLITE
    migrations = SQLITE_MIGRATIONS

    def __init__(self, path: Path, synchronous: str = "NORMAL", *, migrate: bool = True) -> None:
        super().__init__(path, "", synchronous)
        self.migrate = migrate

    @property
    def display_url(self) -> str:
        return f"sqlite:///{self.path}"

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        if self.migrate:
            upgrade_schema(conn)
        return conn

    def _query(self, query: Query[T], *, atomic: bool = False) -> Awaitable[T]:
        # Every request of the writer runs in a transaction: ``atomic`` is always so.
        return self._do(lambda conn: run_query(conn, query))

    async def renew_leases(
        self, incoming: Sequence[str], outgoing: Sequence[str], lease: float
    ) -> int:
        """Extend the leases of pending deliveries this process is working on (the
        heartbeat); a lease held longer already (a retry being waited for) is kept."""
        inc, out = list(incoming), list(outgoing)

        def op(conn: sqlite3.Connection) -> int:
            until = time.time() + lease
            n = 0
            for table, ids in (("inbox", inc), ("outbox", out)):
                n += conn.executemany(
                    f"UPDATE {table} SET lease_until=MAX(lease_until, ?) "
                    "WHERE id=? AND status='pending'",
                    [(until, i) for i in ids],
                ).rowcount
            return n

        return await self._do(op)

    # -- inbox

    def add_incoming(
        self, record: IncomingRecord, lease: float, dedup_since: float | None = None
    ) -> Awaitable[bool]:
        """Store a new delivery, leased to this process. False when its dedup key was seen.

        With ``dedup_since``, a key first seen before that time no longer counts (the dedup
        window): its old row lets go of the key and the new delivery is stored. This holds
        whether or not ``prune_dedup`` has run since, so restarts change nothing.
        """

        size = len(record.body)
        inline = size <= INLINE_BODY_BYTES
        row = (
            record.id,
            record.hook_id,
            record.received_at,
            record.content_type,
            jsontext.dumps(record.headers),
            jsontext.dumps(record.query) if record.query else "{}",
            record.client_ip,
            record.session,
            record.dedup_key,
            time.time() + lease,
            record.body if inline else b"",
        )
        statements = _ADD_INCOMING if inline else _ADD_INCOMING_APART
        params: tuple[tuple[Any, ...], ...] = (row,) if inline else (row, (record.id, record.body))

        def add_or_dedup(conn: sqlite3.Connection) -> bool:
            """Alone, after the batch failed: a conflict on the dedup key is looked at."""
            try:
                execute_all(conn, statements, params)
            except sqlite3.IntegrityError:
                if record.dedup_key is None or dedup_since is None:
                    raise
                expired = conn.execute(
                    "UPDATE inbox SET dedup_key=NULL WHERE hook_id=? AND dedup_key=? "
                    "AND received_at<?",
                    (record.hook_id, record.dedup_key, dedup_since),
                ).rowcount
                if not expired:
                    return False
                execute_all(conn, statements, params)
            return True

        on_loop = size <= LOOP_BODY_BYTES
        return self._do(Rows(statements, params, True, add_or_dedup, on_loop, rows_for(size)))

    async def prune_dedup(self, before: float) -> int:
        """Forget the dedup keys of deliveries received before ``before``; returns how many."""

        def op(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "UPDATE inbox SET dedup_key=NULL WHERE dedup_key IS NOT NULL AND received_at<?",
                    (before,),
                ).rowcount
            )

        return await self._do(op)

    async def claim_incoming(self, limit: int, lease: float) -> list[IncomingRecord]:
        """Due deliveries whose lease is free, leased to this process, oldest first."""

        def op(conn: sqlite3.Connection) -> list[IncomingRecord]:
            now = time.time()
            rows = conn.execute(
                f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE status='pending' "
                "AND next_attempt_at<=? AND lease_until<=? ORDER BY received_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE inbox SET lease_until=? WHERE id=?", [(now + lease, r[0]) for r in rows]
            )
            return [incoming_record(r) for r in rows]

        return await self._do(op)

    def finish_incoming(
        self,
        delivery_id: str,
        status: str,
        *,
        attempts: int,
        result: Any = None,
        error: str | None = None,
        retry_at: float | None = None,
        failed: Attempt | None = None,
        message: str | None = None,
    ) -> Awaitable[None]:
        """Record an action's outcome: done, dead, dropped, or pending again at ``retry_at``;
        ``failed``, the attempt that failed, goes into the delivery's history with it."""

        params = finish_params(delivery_id, status, attempts, result, error, retry_at, message)
        rows = _outcome_rows(params)
        if failed is None:
            return self._do(Rows(_FINISH_INCOMING, (params,), rows=rows))
        return self._do(Rows(_FAIL_INCOMING, (params, attempt_params(failed)), rows=rows))

    def record_outcome(
        self,
        delivery_id: str,
        status: str,
        *,
        attempts: int,
        result: Any = None,
        message: str | None = None,
    ) -> None:
        params = finish_params(delivery_id, status, attempts, result, None, None, message)
        self._send(
            Rows(_FINISH_INCOMING, (params,), on_loop=True, rows=_outcome_rows(params)),
            f"the outcome of delivery {delivery_id}",
        )

    def record_event(self, event: EventRecord) -> None:
        # A short row: committed with the outcomes and inserts of its turn on the loop.
        write = Rows(_ADD_EVENT, (event.values(),), on_loop=True, rows=rows_for(len(event.payload)))
        self._send(write, f"event {event.id}")

    async def release_leases(self) -> None:
        """Free every lease. Only right for a store one process owns (SQLite), at start-up."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE inbox SET lease_until=0 WHERE status='pending'")
            conn.execute("UPDATE outbox SET lease_until=0 WHERE status='pending'")

        await self._do(op)

    async def probe_write(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(PROBE_WRITE)

        await self._do(op)

    # -- outbox

    async def add_outgoing(
        self, records: Sequence[OutgoingRecord], lease: float, event: EventRecord | None = None
    ) -> list[str]:
        """Store deliveries and ``event``, the event they deliver, in one transaction;
        returns the ids that were new and, when ``lease`` > 0, are leased to this process.

        A new row is leased only when no earlier row of its lane is pending without a lease
        (a retry left by a stopped process, a row stored while the outbox was not running):
        otherwise it waits its turn, and the poller claims the lane in order. A live lease
        is this process's own (it owns the file): its rows are in its lanes, in order.
        A row id that exists already is left as it is, so publishing an event again after a
        crash (same event id, same subscription) never makes a second delivery.
        """

        def op(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            until = now + lease if lease > 0 else 0.0
            if event is not None:
                conn.execute(INSERT_EVENT, event.values())
            added: list[str] = []
            for r in records:
                waits = (
                    until > 0
                    and r.status == "pending"
                    and r.session is not None
                    and conn.execute(
                        _UNLEASED_IN_LANE, (r.subscription_id, r.session, now)
                    ).fetchone()
                    is not None
                )
                cur = conn.execute(_ADD_OUTGOING, (*r.values(), 0.0 if waits else until))
                if cur.rowcount and not waits:
                    added.append(r.id)
            return added

        # A row for each delivery, one for the event, and their payloads by their size.
        size = sum(len(r.payload) for r in records) + (0 if event is None else len(event.payload))
        return await self._do(Weighed(op, rows_for(size) + len(records)))

    async def claim_outgoing(
        self, limit: int, lease: float, exclude: Sequence[str] = ()
    ) -> list[OutgoingRecord]:
        """Due deliveries whose lease is free, oldest first, leased to this process.

        A delivery is not claimed while an earlier one of the same subscription and session is
        still pending and waiting (a retry not yet due, or leased elsewhere): events of one
        session reach one endpoint in order. ``exclude`` skips subscriptions that already
        have enough work in hand.
        """

        def op(conn: sqlite3.Connection) -> list[OutgoingRecord]:
            now = time.time()
            skip = ""
            if exclude:
                skip = f"AND o.subscription_id NOT IN ({','.join('?' * len(exclude))}) "
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS_O} FROM outbox o WHERE o.status='pending' "
                f"AND o.next_attempt_at<=? AND o.lease_until<=? {skip}"
                "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.status='pending' "
                "AND p.subscription_id=o.subscription_id AND p.session=o.session "
                "AND p.seq<o.seq AND (p.next_attempt_at>? OR p.lease_until>?)) "
                "ORDER BY o.seq LIMIT ?",
                (now, now, *exclude, now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET lease_until=? WHERE id=?", [(now + lease, r[0]) for r in rows]
            )
            return [outgoing_record(r) for r in rows]

        return await self._do(op)

    async def finish_outgoing_many(self, outcomes: Sequence[OutgoingOutcome]) -> list[str]:
        """Record many attempts' outcomes in one transaction (the dispatcher batches them).

        Attempt numbers continue across replays, so the history of a revived dead letter is
        kept; ``attempts`` on the row counts the current round only. Every outcome is
        recorded: one process owns the file (no id is returned as taken over).
        """

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(FINISH_OUTGOING, outcome_params(outcomes))
            conn.executemany(
                RECORD_ATTEMPT,
                [attempt_params(o.attempt) for o in outcomes if o.attempt is not None],
            )

        await self._do(op)
        return []

    async def release_outgoing(self, ids: Sequence[str]) -> None:
        """Give up the leases of deliveries this process holds but will not finish."""
        wanted = list(ids)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET lease_until=0 WHERE id=? AND status='pending'",
                [(i,) for i in wanted],
            )

        await self._do(op)

    async def claim_outgoing_ids(self, ids: Sequence[str], lease: float) -> list[OutgoingRecord]:
        """Lease these pending deliveries if nobody holds them (a CLI replay uses it)."""
        wanted = list(ids)

        def op(conn: sqlite3.Connection) -> list[OutgoingRecord]:
            now = time.time()
            claimed: list[OutgoingRecord] = []
            for delivery_id in wanted:
                row = conn.execute(
                    f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id=? AND status='pending' "
                    "AND lease_until<=?",
                    (delivery_id, now),
                ).fetchone()
                if row is not None:
                    conn.execute(
                        "UPDATE outbox SET lease_until=? WHERE id=?", (now + lease, delivery_id)
                    )
                    claimed.append(outgoing_record(row))
            return claimed

        return await self._do(op)

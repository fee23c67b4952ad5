"""The store on PostgreSQL: one durable inbox, outbox and dead-letter queue shared by several
gateway processes, on one machine or many.

What makes sharing safe:

- Work is claimed with ``FOR UPDATE SKIP LOCKED`` and a lease (``lease_until``, ``lease_owner``):
  two processes never claim the same row, and a process that dies loses its claims when the
  lease expires. The runtime's heartbeat renews the leases this process still works on.
- Outgoing claims are serialised by a transaction-scoped advisory lock, and creating rows of
  one (subscription, session) lane by a lock per lane, so the "no earlier row of my lane is
  waiting or leased elsewhere" checks see every other process's committed work: per-session
  order holds across processes. A new row is leased to its creator only when every earlier
  pending row of its lane is that process's own (a claim can never take those).
- A duplicate is decided by the unique index on (hook_id, dedup_key) with
  ``INSERT ... ON CONFLICT DO NOTHING``: under concurrency exactly one process stores it.
- Schema migrations run at start-up under a session-level advisory lock, so processes that
  start together apply each migration once; retention and dedup pruning take a
  try-lock and are skipped by whoever does not get it.

Connections, and what becomes of their errors, are ``postgres_pool``'s.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import asyncpg

from clawdbot_webhooks import jsontext
from clawdbot_webhooks.store.postgres_batches import Batches
from clawdbot_webhooks.store.postgres_pool import PostgresPool, lock_key, numbered, reason, rowcount
from clawdbot_webhooks.store.postgres_schema import MIGRATIONS
from clawdbot_webhooks.store.postgres_schema import migrate as upgrade_schema
from clawdbot_webhooks.store.queries import Dialect, Statement
from clawdbot_webhooks.store.records import (
    Attempt,
    EventRecord,
    IncomingRecord,
    OutgoingOutcome,
    OutgoingRecord,
)
from clawdbot_webhooks.store.rows import (
    EVENT_COLUMNS,
    FINISH_OUTGOING,
    INBOX_COLUMNS,
    OUTBOX_COLUMNS,
    RECORD_ATTEMPT,
    attempt_params,
    finish_params,
    incoming_record,
    outcome_params,
    outgoing_record,
)
from clawdbot_webhooks.store.shared import SharedQueries

log = logging.getLogger(__name__)

_INBOX_INSERT = (
    "INSERT INTO inbox (id, hook_id, received_at, content_type, body, headers, query, "
    "client_ip, session, status, attempts, next_attempt_at, last_error, dedup_key, "
    "lease_until, lease_owner) "
)
_ADD_INCOMING = (
    _INBOX_INSERT + "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_ADD_INCOMING_MANY = (
    _INBOX_INSERT
    + "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::bytea[], "
    "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::float8[], "
    "$13::text[], $14::text[], $15::float8[], $16::text[]) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_ADD_OUTGOING_MANY = (
    "INSERT INTO outbox (id, event_id, subscription_id, event_type, session, payload, "
    "created_at, status, attempts, next_attempt_at, last_error, causation, lease_until, "
    "lease_owner) "
    "SELECT t.id, t.event_id, t.subscription_id, t.event_type, t.session, t.payload, "
    "t.created_at, t.status, t.attempts, t.next_attempt_at, t.last_error, t.causation, v.until, "
    "CASE WHEN v.until > 0 THEN $14 END "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], "
    "$7::float8[], $8::text[], $9::int[], $10::float8[], $11::text[], $12::text[]) "
    "WITH ORDINALITY AS t(id, event_id, subscription_id, event_type, session, payload, "
    "created_at, status, attempts, next_attempt_at, last_error, causation, n) "
    "CROSS JOIN LATERAL (SELECT CASE WHEN $13 > 0 AND t.status = 'pending' AND NOT EXISTS "
    "(SELECT 1 FROM outbox p WHERE p.status='pending' AND p.subscription_id=t.subscription_id "
    "AND p.session=t.session AND (p.lease_owner IS DISTINCT FROM $14 OR p.lease_until<=$15)) "
    "THEN $13 ELSE 0 END AS until) v "
    "ORDER BY t.n "  # ids (seq) in the order the rows were handed over: lanes keep their order
    "ON CONFLICT (id) DO NOTHING RETURNING id, lease_until > 0"
)
#: Published events, many in one statement.
_ADD_EVENTS = (
    f"INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], "
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::float8[]) "
    "ON CONFLICT DO NOTHING"
)
#: An outcome is written only while this process (``$9``) still holds the lease: once another
#: process took the delivery over, the row and its outcome are that process's.
_FINISH_INCOMING = (
    "UPDATE inbox SET status=$1, attempts=$2, result=$3, last_error=$4, next_attempt_at=$5, "
    "lease_until=0, lease_owner=NULL, finished_at=$6, message=COALESCE($7, message) "
    "WHERE id=$8 AND lease_owner=$9 RETURNING id"
)

T = TypeVar("T")

#: A write that changes nothing but is a write all the same (a row rewritten with its own
#: values, committed): it fails where any write would.
_PROBE_WRITE = (
    "UPDATE schema_migrations SET applied_at=applied_at "
    "WHERE version=(SELECT MAX(version) FROM schema_migrations)"
)

#: The shared statements, their placeholders numbered for asyncpg.
_RECORD_ATTEMPT = numbered(RECORD_ATTEMPT)
_FINISH_OUTGOING = numbered(f"{FINISH_OUTGOING} AND lease_owner=? RETURNING id")

POSTGRES = Dialect(
    name="postgresql",
    tables=(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    ),
    inbox_columns=INBOX_COLUMNS,
    greatest="GREATEST",
    free_lease="lease_until=0, lease_owner=NULL",
    in_ids="{} = ANY(?::text[])",
    ids=list,
    bucket="floor(finished_at / ?)::bigint",
)


class PostgresStore(PostgresPool, SharedQueries):
    """The store on PostgreSQL through an asyncpg connection pool."""

    single_process = False
    dialect = POSTGRES
    migrations = MIGRATIONS

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        migrate: bool = True,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            url,
            schema=schema,
            pool_size=pool_size,
            create_schema=migrate,
            connect_timeout=connect_timeout,
        )
        self.migrate = migrate
        #: Who holds a lease: this process, so the heartbeat renews only its own.
        self.owner = f"{secrets.token_hex(6)}"
        #: Outcomes and events nobody waits for (``record_outcome``, ``record_event``): one
        #: round trip and one commit for all that came meanwhile, and no pool connection taken
        #: from the inserts for each.
        self._outcomes: Batches[tuple[Any, ...] | EventRecord, bool] = Batches(
            self._run, self._finish_many
        )
        self._inserts = Batches(
            functools.partial(self._run, transaction=False), self._insert_incoming
        )
        self._adds = Batches(self._run, self._insert_outgoing)
        scope = schema or "public"
        self._outbox_lock = lock_key(f"clawdbot_webhooks.outbox.{scope}")
        self._migrate_lock = lock_key(f"clawdbot_webhooks.migrate.{scope}")
        self._retention_lock_key = lock_key(f"clawdbot_webhooks.retention.{scope}")
        self._dedup_lock = lock_key(f"clawdbot_webhooks.dedup.{scope}")

    def _lane_key(self, subscription: str, session: str) -> int:
        return lock_key(f"clawdbot_webhooks.lane.{self.schema}.{subscription}\x1f{session}")

    async def open(self) -> None:
        await super().open()
        if self.migrate:
            await self._upgrade()

    async def close(self) -> None:
        await self._outcomes.written()  # what finished is written first
        await super().close()

    async def _upgrade(self) -> None:
        await self._run(
            functools.partial(upgrade_schema, lock=self._migrate_lock), transaction=False
        )

    # -- inbox

    async def add_incoming(
        self, record: IncomingRecord, lease: float, dedup_since: float | None = None
    ) -> bool:
        """Store a new delivery leased to this process; False when its dedup key was seen
        (within ``dedup_since``). ON CONFLICT makes concurrent duplicates resolve to one."""
        args = (
            record.id,
            record.hook_id,
            record.received_at,
            record.content_type,
            record.body,
            jsontext.dumps(record.headers),
            jsontext.dumps(record.query),
            record.client_ip,
            record.session,
            record.status,
            record.attempts,
            record.next_attempt_at,
            record.last_error,
            record.dedup_key,
            time.time() + lease,
            self.owner,
        )

        async def op(conn: asyncpg.Connection) -> bool:
            if await conn.fetchval(_ADD_INCOMING, *args) is not None:
                return True
            if record.dedup_key is None or dedup_since is None:
                if await conn.fetchval("SELECT 1 FROM inbox WHERE id=$1", record.id):
                    raise ValueError(f"delivery id {record.id} exists already")
                return False
            expired = await conn.execute(
                "UPDATE inbox SET dedup_key=NULL WHERE hook_id=$1 AND dedup_key=$2 "
                "AND received_at<$3",
                record.hook_id,
                record.dedup_key,
                dedup_since,
            )
            if expired.endswith(" 0"):
                return False
            return await conn.fetchval(_ADD_INCOMING, *args) is not None

        # The common case: one statement, sharing a commit with the deliveries that arrived
        # meanwhile. A conflict (a repeated dedup key, maybe expired) is settled on its own.
        if await self._inserts(args):
            return True
        return await self._run(op)

    @staticmethod
    async def _insert_incoming(
        batch: Sequence[tuple[Any, ...]], conn: asyncpg.Connection
    ) -> list[bool]:
        # One statement for them all, atomic without a transaction around it: one round trip.
        # Rows go in by (hook, dedup key), the order every process takes their locks in, so
        # two processes storing the same keys at once cannot deadlock.
        ordered = sorted(batch, key=lambda args: (args[1], args[13] or ""))
        rows = await conn.fetch(_ADD_INCOMING_MANY, *zip(*ordered, strict=True))
        stored = {row[0] for row in rows}
        # One id, one row: a second call with the same id did not store anything.
        new = []
        for args in batch:
            new.append(args[0] in stored)
            stored.discard(args[0])
        return new

    async def prune_dedup(self, before: float) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._dedup_lock):
                return 0  # another process is at it
            status = await conn.execute(
                "UPDATE inbox SET dedup_key=NULL WHERE dedup_key IS NOT NULL AND received_at<$1",
                before,
            )
            return rowcount(status)

        return await self._run(op)

    async def claim_incoming(self, limit: int, lease: float) -> list[IncomingRecord]:
        async def op(conn: asyncpg.Connection) -> list[IncomingRecord]:
            now = time.time()
            rows = await conn.fetch(
                f"UPDATE inbox SET lease_until=$2, lease_owner=$3 WHERE id IN ("
                "SELECT id FROM inbox WHERE status='pending' AND next_attempt_at<=$1 "
                "AND lease_until<=$1 ORDER BY received_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {INBOX_COLUMNS}",
                now,
                now + lease,
                self.owner,
                limit,
            )
            return sorted((incoming_record(r) for r in rows), key=lambda r: r.received_at)

        return await self._run(op)

    async def finish_incoming(
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
    ) -> None:
        params = finish_params(delivery_id, status, attempts, result, error, retry_at, message)

        async def op(conn: asyncpg.Connection) -> bool:
            taken = await conn.fetchval(_FINISH_INCOMING, *params, self.owner) is None
            if failed is not None:  # it was made all the same
                await conn.execute(_RECORD_ATTEMPT, *attempt_params(failed))
            return taken

        if await self._run(op, transaction=failed is not None):
            _taken_over("delivery", delivery_id, status)

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
        written = self._outcomes.submit(params)
        written.add_done_callback(functools.partial(_report_unwritten, delivery_id, status))

    def record_event(self, event: EventRecord) -> None:
        written = self._outcomes.submit(event)
        written.add_done_callback(functools.partial(_report_unwritten_event, event.id))

    async def _finish_many(
        self, batch: Sequence[tuple[Any, ...] | EventRecord], conn: asyncpg.Connection
    ) -> list[bool]:
        """Outcomes and events; for each, whether it was an outcome another process's lease
        kept out."""
        # Rows locked in id order, as the lease heartbeat locks them, so the two cannot
        # deadlock.
        outcomes = sorted(
            ((*params, self.owner) for params in batch if isinstance(params, tuple)),
            key=lambda params: params[-2],
        )
        written: set[str] = set()
        if outcomes:
            written = {row["id"] for row in await conn.fetchmany(_FINISH_INCOMING, outcomes)}
        await _insert_events([e for e in batch if isinstance(e, EventRecord)], conn)
        return [isinstance(one, tuple) and one[-1] not in written for one in batch]

    async def release_leases(self) -> None:
        """Free this process's leases (other processes' stay theirs)."""

        async def op(conn: asyncpg.Connection) -> None:
            for table in ("inbox", "outbox"):
                await conn.execute(
                    f"UPDATE {table} SET lease_until=0, lease_owner=NULL "
                    "WHERE status='pending' AND lease_owner=$1",
                    self.owner,
                )

        await self._run(op)

    async def probe_write(self) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(_PROBE_WRITE)

        await self._run(op)

    # -- outbox

    async def add_outgoing(
        self, records: Sequence[OutgoingRecord], lease: float, event: EventRecord | None = None
    ) -> list[str]:
        """Store deliveries; returns the ids that were new and, when ``lease`` > 0, are
        leased to this process. A new row is leased only when no earlier row of its lane is
        pending under someone else's lease (or none): otherwise it waits its turn and the
        process that holds the lane's head (or whoever claims next) takes it in order.

        Calls made while a transaction of them is on its way share the next one: one commit
        for all the events published meanwhile, not one each. ``event``, the event the rows
        deliver, is stored in the same transaction."""
        return await self._adds((records, lease, event))

    async def _insert_outgoing(
        self,
        batch: Sequence[tuple[Sequence[OutgoingRecord], float, EventRecord | None]],
        conn: asyncpg.Connection,
    ) -> list[list[str]]:
        now = time.time()
        await _insert_events([e for _, _, e in batch if e is not None], conn)
        # One lock per lane, taken in order: creating rows of one (subscription, session)
        # is serialised across processes, different lanes do not wait for each other.
        lanes = sorted(
            {
                self._lane_key(r.subscription_id, r.session)
                for records, _, _ in batch
                for r in records
                if r.session
            }
        )
        if lanes:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k",
                lanes,
            )
        results: list[list[str]] = []
        # One statement per run of calls with the same lease, rows in call order. A row does
        # not see the rows of its own statement, and need not: this process's leased rows do
        # not hold back later ones of their lane, and a row held back by another process's
        # row is followed by rows that that same row holds back.
        for lease, run in itertools.groupby(batch, key=lambda call: call[1]):
            calls = [records for records, _, _ in run]
            rows = [r for records in calls for r in records]
            if not rows:
                results.extend([] for _ in calls)
                continue
            until = now + lease if lease > 0 else 0.0
            columns = zip(*(r.values() for r in rows), strict=True)
            stored = await conn.fetch(_ADD_OUTGOING_MANY, *columns, until, self.owner, now)
            # One id, one row: the first call that has it stored it, a later one did not.
            leased = {row[0]: row[1] for row in stored}
            for records in calls:
                added: list[str] = []
                for r in records:
                    got = leased.pop(r.id, None)
                    if got is not None and (got or lease <= 0):
                        added.append(r.id)
                results.append(added)
        return results

    async def claim_outgoing(
        self, limit: int, lease: float, exclude: Sequence[str] = ()
    ) -> list[OutgoingRecord]:
        """Due rows whose lease is free, in creation order, leased to this process; a row
        waits while an earlier row of its lane is pending and not yet due or leased (by any
        process). Claims are serialised by an advisory lock so that check is never racing
        another process's claim of the same lane."""

        async def op(conn: asyncpg.Connection) -> list[OutgoingRecord]:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._outbox_lock)
            now = time.time()
            rows = await conn.fetch(
                f"UPDATE outbox SET lease_until=$2, lease_owner=$3 WHERE id IN ("
                "SELECT o.id FROM outbox o WHERE o.status='pending' AND o.next_attempt_at<=$1 "
                "AND o.lease_until<=$1 AND NOT (o.subscription_id = ANY($4::text[])) "
                "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.status='pending' "
                "AND p.subscription_id=o.subscription_id AND p.session=o.session "
                "AND p.seq<o.seq AND (p.next_attempt_at>$1 OR p.lease_until>$1)) "
                "ORDER BY o.seq LIMIT $5 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {OUTBOX_COLUMNS}",
                now,
                now + lease,
                self.owner,
                list(exclude),
                limit,
            )
            return sorted((outgoing_record(r) for r in rows), key=lambda r: r.seq)

        return await self._run(op)

    async def finish_outgoing_many(self, outcomes: Sequence[OutgoingOutcome]) -> list[str]:
        async def op(conn: asyncpg.Connection) -> set[str]:
            # In id order, as ``_finish_many``.
            params = sorted(
                ((*row, self.owner) for row in outcome_params(outcomes)), key=lambda p: p[-2]
            )
            written = {row["id"] for row in await conn.fetchmany(_FINISH_OUTGOING, params)}
            attempts = [o.attempt for o in outcomes if o.attempt is not None]
            if attempts:
                await conn.executemany(_RECORD_ATTEMPT, [attempt_params(a) for a in attempts])
            return written

        written = await self._run(op)
        taken = [o for o in outcomes if o.delivery_id not in written]
        for outcome in taken:
            _taken_over("outgoing delivery", outcome.delivery_id, outcome.status)
        return [o.delivery_id for o in taken]

    async def release_outgoing(self, ids: Sequence[str]) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE outbox SET lease_until=0, lease_owner=NULL WHERE id = ANY($1::text[]) "
                "AND status='pending' AND lease_owner=$2",
                list(ids),
                self.owner,
            )

        await self._run(op)

    async def claim_outgoing_ids(self, ids: Sequence[str], lease: float) -> list[OutgoingRecord]:
        async def op(conn: asyncpg.Connection) -> list[OutgoingRecord]:
            now = time.time()
            rows = await conn.fetch(
                f"UPDATE outbox SET lease_until=$2, lease_owner=$3 WHERE id IN ("
                "SELECT id FROM outbox WHERE id = ANY($4::text[]) AND status='pending' "
                "AND lease_until<=$1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {OUTBOX_COLUMNS}",
                now,
                now + lease,
                self.owner,
                list(ids),
            )
            order = {i: n for n, i in enumerate(ids)}
            return sorted((outgoing_record(r) for r in rows), key=lambda r: order[r.id])

        return await self._run(op)

    # -- leases and retention

    async def renew_leases(
        self, incoming: Sequence[str], outgoing: Sequence[str], lease: float
    ) -> int:
        """Each table in a transaction of its own that waits for a lock a third of the lease
        at most: a lock held on one table (an index being built, a newer version's
        migration) neither holds the other's renewal up nor keeps this one's row locks until
        the leases have run out and another process takes the work."""
        until = time.time() + lease
        wait = f"SET LOCAL lock_timeout = '{max(1, int(lease * 1000 / 3))}ms'"
        renewed, failure = 0, None
        for table, ids in (("inbox", incoming), ("outbox", outgoing)):
            if not ids:
                continue

            async def op(conn: asyncpg.Connection, table: str = table, ids: Any = ids) -> int:
                await conn.execute(wait)
                status = await conn.execute(
                    f"UPDATE {table} SET lease_until=GREATEST(lease_until, $1) "
                    "WHERE id = ANY($2::text[]) AND status='pending' AND lease_owner=$3",
                    until,
                    list(ids),
                    self.owner,
                )
                return rowcount(status)

            try:
                renewed += await self._run(op)
            except Exception as exc:  # the other table is still renewed
                failure = failure or exc
        if failure is not None:
            raise failure
        return renewed

    def _retention_lock(self) -> Statement:
        return ("SELECT pg_try_advisory_xact_lock(?)", (self._retention_lock_key,))


def _taken_over(kind: str, delivery_id: str, status: str) -> None:
    log.warning(
        "%s %s: its lease ran out and another process took it over; this process's outcome "
        "(%s) is not recorded (the other's will be)",
        kind,
        delivery_id,
        status,
        extra={"delivery": delivery_id},
    )


async def _insert_events(events: Sequence[EventRecord], conn: asyncpg.Connection) -> None:
    if events:
        await conn.execute(_ADD_EVENTS, *zip(*(e.values() for e in events), strict=True))


def _report_unwritten_event(event_id: str, written: asyncio.Future[bool]) -> None:
    exc = None if written.cancelled() else written.exception()
    if exc is not None:
        log.error("event %s could not be stored: %s", event_id, reason(exc))


def _report_unwritten(delivery_id: str, status: str, written: asyncio.Future[bool]) -> None:
    # Its delivery stays pending under its lease and runs again once the lease expires.
    exc = None if written.cancelled() else written.exception()
    if exc is not None:
        log.error("the outcome of delivery %s could not be written: %s", delivery_id, reason(exc))
    elif not written.cancelled() and written.result():
        _taken_over("delivery", delivery_id, status)

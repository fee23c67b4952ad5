"""The queries both backends run, written once: what differs between SQLite and PostgreSQL
is named in a ``Dialect``, and each query is a generator that yields its statements (``?``
placeholders) and is sent each one's rows, so that one text serves SQLite's writer thread
and asyncpg's coroutines alike. ``SharedQueries`` holds the store methods made of them.

The writes on every delivery's path are not here: each backend batches those its own way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from clawdbot_webhooks.store.records import (
    Attempt,
    DeadLetter,
    DeliveryQuery,
    DeliverySummary,
    IncomingRecord,
    OutgoingRecord,
)
from clawdbot_webhooks.store.rows import (
    KIND_COLUMNS,
    OUTBOX_COLUMNS,
    incoming_record,
    outgoing_record,
)
from clawdbot_webhooks.store.schema import Migration, SchemaStatus

T = TypeVar("T")

#: A statement and its parameters.
Statement = tuple[str, Sequence[Any]]
#: A query: yields statements, is sent each one's rows, returns its result.
Query = Generator[Statement, list[Any], T]

#: The directions' tables, the inbox first.
TABLES = ("inbox", "outbox")


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a backend's SQL says its own way."""

    #: The backend's name, as ``db status`` shows it.
    name: str
    #: The query that lists the schema's tables.
    tables: str
    #: The columns of ``rows.INBOX_COLUMNS`` as this backend reads them.
    inbox_columns: str
    #: The larger of two values: ``MAX`` or ``GREATEST``.
    greatest: str
    #: The assignments that free a row's lease.
    free_lease: str
    #: A test that ``{}`` (a column) is one of the ids in a parameter, and that parameter
    #: made from a list of ids.
    in_ids: str
    ids: Callable[[list[str]], Any]
    #: ``finished_at`` as a whole number of buckets of ``?`` seconds.
    bucket: str
    #: Tables besides ``attempts`` with rows of a delivery, by its ``id``.
    side_tables: tuple[str, ...] = ()


def fetch(sql: str, *args: Any) -> Query[list[Any]]:
    """One statement's rows."""
    return (yield (sql, args))


def schema_status(d: Dialect, migrations: Sequence[Migration], url: str) -> Query[SchemaStatus]:
    tables = {str(r[0]) for r in (yield (d.tables, ()))}
    applied: list[tuple[int, str, float]] = []
    if "schema_migrations" in tables:
        rows = yield ("SELECT version, name, applied_at FROM schema_migrations ORDER BY 1", ())
        applied = [(int(v), str(n), float(a)) for v, n, a in rows]
    done = {v for v, _, _ in applied}
    pending = [(m.version, m.name) for m in migrations if m.version not in done]
    counts: dict[str, dict[str, int]] = {}
    for table in TABLES:
        if table in tables:
            rows = yield (f"SELECT status, COUNT(*) FROM {table} GROUP BY 1", ())
            counts[table] = {str(k): int(n) for k, n in rows}
    if "attempts" in tables:
        [(n,)] = yield ("SELECT COUNT(*) FROM attempts", ())
        counts["attempts"] = {"all": int(n)}
    return SchemaStatus(d.name, url, applied, pending, counts)


def _forget(d: Dialect, ids: list[str]) -> Query[None]:
    """Delete what else is kept of these deliveries, now gone: attempts, bodies."""
    if ids:
        for table, column in (("attempts", "delivery_id"), *((t, "id") for t in d.side_tables)):
            yield (f"DELETE FROM {table} WHERE {d.in_ids.format(column)}", (d.ids(ids),))


def purge_dead(d: Dialect, before: float | None) -> Query[int]:
    upper = time.time() + 1 if before is None else before
    ids: list[str] = []
    for table, _, created in KIND_COLUMNS.values():
        rows = yield (
            f"DELETE FROM {table} WHERE status='dead' AND {created}<? RETURNING id",
            (upper,),
        )
        ids.extend(r[0] for r in rows)
    yield from _forget(d, ids)
    return len(ids)


def purge_dead_ids(d: Dialect, wanted: list[str]) -> Query[int]:
    ids: list[str] = []
    for table in TABLES:
        rows = yield (
            f"DELETE FROM {table} WHERE {d.in_ids.format('id')} AND status='dead' RETURNING id",
            (d.ids(wanted),),
        )
        ids.extend(r[0] for r in rows)
    yield from _forget(d, ids)
    return len(ids)


def _pending_again(d: Dialect, table: str) -> str:
    """An UPDATE that makes rows pending again, attempts starting over (WHERE to follow)."""
    return (
        f"UPDATE {table} SET status='pending', attempts=0, next_attempt_at=0, "
        f"{d.free_lease}, finished_at=NULL WHERE "
    )


def revive(d: Dialect, wanted: list[str]) -> Query[list[str]]:
    done: set[str] = set()
    for table in TABLES:
        rows = yield (
            _pending_again(d, table) + f"{d.in_ids.format('id')} AND status='dead' RETURNING id",
            (d.ids(wanted),),
        )
        done.update(r[0] for r in rows)
    return [i for i in dict.fromkeys(wanted) if i in done]


def requeue(d: Dialect, delivery_id: str, kind: str) -> Query[bool]:
    table = KIND_COLUMNS[kind][0]
    rows = yield (
        _pending_again(d, table) + "id=? AND status!='pending' RETURNING id",
        (delivery_id,),
    )
    return bool(rows)


def queue_counts() -> Query[dict[str, int]]:
    now = time.time()
    counts: dict[str, int] = {}
    for kind, (table, _, _) in KIND_COLUMNS.items():
        # One count per status, so that each can use a partial index of its own.
        [(waiting, dead)] = yield (
            f"SELECT (SELECT COUNT(*) FROM {table} WHERE status='pending' "
            f"AND next_attempt_at>?), (SELECT COUNT(*) FROM {table} WHERE status='dead')",
            (now,),
        )
        counts[f"{kind}_waiting"] = int(waiting)
        counts[f"{kind}_dead"] = int(dead)
    return counts


def _latest(target: str, error: str, at: str, source: str) -> str:
    """Per ``target``, the ``error`` with the latest ``at`` among the rows of ``source``."""
    return (
        f"SELECT target, error, at FROM (SELECT {target} AS target, {error} AS error, {at} AS at, "
        f"ROW_NUMBER() OVER (PARTITION BY {target} ORDER BY {at} DESC) AS n FROM {source}) "
        "latest WHERE n=1"
    )


def delivery_stats(since: float) -> Query[list[dict[str, Any]]]:
    stats = EndpointStats()
    for kind, (table, target, created) in KIND_COLUMNS.items():
        rows = yield (
            f"SELECT {target}, status, COUNT(*) FROM {table} WHERE {created}>=? GROUP BY 1, 2",
            (since,),
        )
        stats.statuses(kind, rows)
    outgoing_attempts = "attempts a JOIN outbox o ON o.id=a.delivery_id"
    stats.attempts(
        (
            yield (
                "SELECT o.subscription_id, COUNT(*), "
                "COUNT(CASE WHEN a.status BETWEEN 200 AND 299 THEN 1 END) "
                f"FROM {outgoing_attempts} WHERE a.at>=? GROUP BY 1",
                (since,),
            )
        )
    )
    stats.last_errors(
        "outgoing",
        (
            yield (
                _latest(
                    "o.subscription_id",
                    "a.error",
                    "a.at",
                    f"{outgoing_attempts} WHERE a.error IS NOT NULL",
                ),
                (),
            )
        ),
    )
    stats.last_errors(
        "incoming",
        (
            yield (
                _latest(
                    "hook_id",
                    "last_error",
                    "COALESCE(finished_at, received_at)",
                    "inbox WHERE last_error IS NOT NULL",
                ),
                (),
            )
        ),
    )
    return stats.result()


def throughput(d: Dialect, since: float, bucket: float) -> Query[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    for kind, (table, _, _) in KIND_COLUMNS.items():
        rows = yield (
            f"SELECT {d.bucket}, status, COUNT(*) FROM {table} WHERE finished_at>=? GROUP BY 1, 2",
            (bucket, since),
        )
        found.extend(
            {"at": slot * bucket, "kind": kind, "status": status, "count": n}
            for slot, status, n in rows
        )
    return found


class SharedQueries:
    """The store methods both backends answer with the queries above. A backend names its
    ``dialect`` and ``migrations`` and runs a query with ``_query`` (``atomic``: in one
    transaction, where that is a choice)."""

    dialect: ClassVar[Dialect]
    migrations: ClassVar[Sequence[Migration]]

    @property
    def display_url(self) -> str:
        raise NotImplementedError

    def _query(self, query: Query[T], *, atomic: bool = False) -> Awaitable[T]:
        raise NotImplementedError

    async def schema_status(self) -> SchemaStatus:
        return await self._query(schema_status(self.dialect, self.migrations, self.display_url))

    async def find_duplicate(self, hook_id: str, dedup_key: str) -> str | None:
        rows = await self._query(
            fetch("SELECT id FROM inbox WHERE hook_id=? AND dedup_key=?", hook_id, dedup_key)
        )
        return str(rows[0][0]) if rows else None

    async def count_incoming(self, status: str | None = None) -> int:
        if status is None:
            rows = await self._query(fetch("SELECT COUNT(*) FROM inbox"))
        else:
            rows = await self._query(fetch("SELECT COUNT(*) FROM inbox WHERE status=?", status))
        return int(rows[0][0])

    async def get_incoming(self, delivery_id: str) -> IncomingRecord | None:
        sql = f"SELECT {self.dialect.inbox_columns} FROM inbox WHERE id=?"
        rows = await self._query(fetch(sql, delivery_id))
        return incoming_record(rows[0]) if rows else None

    async def get_outgoing(self, delivery_id: str) -> OutgoingRecord | None:
        rows = await self._query(
            fetch(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id=?", delivery_id)
        )
        return outgoing_record(rows[0]) if rows else None

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        rows = await self._query(
            fetch(
                "SELECT delivery_id, number, at, status, latency_ms, response, error "
                "FROM attempts WHERE delivery_id=? ORDER BY number",
                delivery_id,
            )
        )
        return [Attempt(*r) for r in rows]

    async def _next_due(self, table: str) -> float | None:
        """When the first pending row of ``table`` may be claimed (due and its lease free)."""
        sql = (
            f"SELECT MIN({self.dialect.greatest}(next_attempt_at, lease_until)) FROM {table} "
            "WHERE status='pending'"
        )
        [(due,)] = await self._query(fetch(sql))
        return None if due is None else float(due)

    async def next_incoming_due(self) -> float | None:
        return await self._next_due("inbox")

    async def next_outgoing_due(self) -> float | None:
        return await self._next_due("outbox")

    # -- dead letters

    async def dead_letters(self, since: float | None = None) -> list[DeadLetter]:
        lower = since or 0.0
        rows = await self._query(
            fetch(
                "SELECT id, 'incoming', hook_id, received_at, attempts, last_error FROM inbox "
                "WHERE status='dead' AND received_at>=? UNION ALL "
                "SELECT id, 'outgoing', subscription_id, created_at, attempts, last_error "
                "FROM outbox WHERE status='dead' AND created_at>=? ORDER BY 4",
                lower,
                lower,
            )
        )
        return [DeadLetter(*r) for r in rows]

    async def revive(self, ids: Iterable[str]) -> list[str]:
        """Make dead letters pending again (attempts start over); returns the ids revived."""
        return await self._query(revive(self.dialect, list(ids)), atomic=True)

    async def purge_dead(self, before: float | None = None) -> int:
        """Delete the dead letters created before ``before`` (all of them without)."""
        return await self._query(purge_dead(self.dialect, before), atomic=True)

    async def purge_dead_ids(self, ids: Iterable[str]) -> int:
        """Delete these dead letters (ids that are not dead letters are left alone)."""
        return await self._query(purge_dead_ids(self.dialect, list(ids)), atomic=True)

    # -- inspection (admin API, dashboard, metrics, CLI)

    async def queue_counts(self) -> dict[str, int]:
        """Pending deliveries whose next attempt is due later (retries waiting) and dead
        letters, of both directions: ``{incoming,outgoing}_{waiting,dead}``."""
        return await self._query(queue_counts())

    async def list_deliveries(self, kind: str, query: DeliveryQuery) -> list[DeliverySummary]:
        """Deliveries of one direction, newest first, without their bodies. ``query.cursor``
        is ``(created_at, id)`` of the last row of the previous page."""
        sql, args = delivery_listing(kind, query)
        return [DeliverySummary(kind, *row) for row in await self._query(fetch(sql, *args))]

    async def delivery_stats(self, since: float) -> list[dict[str, Any]]:
        """Per target of each direction since ``since``: deliveries by status, and for
        outgoing ones the attempts, how many succeeded, and the latest failed attempt."""
        return await self._query(delivery_stats(since))

    async def throughput(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """Finished deliveries per ``bucket`` seconds since ``since``: each row is
        ``{"at", "kind", "status", "count"}`` (``at`` is the bucket's start)."""
        return await self._query(throughput(self.dialect, since, bucket))

    async def requeue(self, delivery_id: str, kind: str) -> bool:
        """Make a finished delivery (done, dropped or dead) of ``kind`` (incoming, outgoing)
        pending again, attempts starting over; False when there is no such finished one."""
        return await self._query(requeue(self.dialect, delivery_id, kind), atomic=True)


def delivery_listing(kind: str, query: DeliveryQuery) -> tuple[str, list[Any]]:
    """The SQL (``?`` placeholders) and arguments of ``list_deliveries``, for every backend."""
    table, target, created = KIND_COLUMNS[kind]
    where: list[str] = []
    args: list[Any] = []
    if query.status:
        where.append("status=?")
        args.append(query.status)
    if query.target:
        where.append(f"{target}=?")
        args.append(query.target)
    if query.since is not None:
        where.append(f"{created}>=?")
        args.append(query.since)
    if query.finished_after is not None:
        where.append("finished_at>?")
        args.append(query.finished_after)
    if query.search:
        # A substring of the id (or, outgoing, of the event id); LIKE's wildcards escaped.
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", query.search) + "%"
        extra = " OR event_id LIKE ? ESCAPE '\\'" if kind == "outgoing" else ""
        where.append(f"(id LIKE ? ESCAPE '\\'{extra})")
        args.extend([pattern] * (2 if extra else 1))
    if query.cursor is not None:
        where.append(f"({created}, id) < (?, ?)")
        args.extend(query.cursor)
    order = f"{created} DESC, id DESC"
    if query.finished_after is not None:
        order = "finished_at, id"
    event = "event_type" if kind == "outgoing" else "NULL"
    sql = (
        f"SELECT id, {target}, status, attempts, {created}, finished_at, next_attempt_at, "
        f"last_error, session, {event} FROM {table}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT ?"
    )
    return sql, [*args, query.limit]


class EndpointStats:
    """``delivery_stats`` rows gathered the same way on every backend: per target of each
    direction, deliveries by status; for outgoing ones the attempts, how many succeeded, and
    the latest error."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], dict[str, Any]] = {}

    def _entry(self, kind: str, target: str) -> dict[str, Any]:
        return self._stats.setdefault(
            (kind, target),
            {
                "kind": kind,
                "target": target,
                "statuses": {},
                "attempts": 0,
                "succeeded": 0,
                "last_error": None,
                "last_error_at": None,
            },
        )

    def statuses(self, kind: str, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (target, status, count)."""
        for target, status, n in rows:
            self._entry(kind, target)["statuses"][status] = n

    def attempts(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (subscription, attempts, succeeded)."""
        for sub, n, ok in rows:
            entry = self._entry("outgoing", sub)
            entry["attempts"], entry["succeeded"] = n, int(ok or 0)

    def last_errors(self, kind: str, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (target, error, at)."""
        for target, error, at in rows:
            entry = self._entry(kind, target)
            entry["last_error"], entry["last_error_at"] = error, at

    def result(self) -> list[dict[str, Any]]:
        return list(self._stats.values())

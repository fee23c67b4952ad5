"""The queries both backends run, written once: what differs between SQLite and PostgreSQL
is named in a ``Dialect``, and each query is a generator that yields its statements (``?``
placeholders) and is sent each one's rows, so that one text serves SQLite's writer thread
and asyncpg's coroutines alike. ``shared.SharedQueries`` holds the store methods made of them.

The writes on every delivery's path are not here: each backend batches those its own way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from clawdbot_webhooks.store.records import CausedDelivery, DeliveryQuery, EventQuery
from clawdbot_webhooks.store.rows import EVENT_COLUMNS, KIND_COLUMNS, events_of_session
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


#: Per table, the finished rows retention deletes: dead letters stay, and so does an incoming
#: delivery while its dedup key guards against a repeat.
_PRUNABLE = (
    ("inbox", "status IN ('done','dropped') AND dedup_key IS NULL"),
    ("outbox", "status='done'"),
)


def prune_finished(
    d: Dialect, before: float, batch: int, lock: Statement | None
) -> Query[tuple[int, int]]:
    """Up to ``batch`` rows of each table: (deliveries, events) deleted; (-1, 0) when
    ``lock`` (if any) is another's. Events go when they are as old as the deliveries that go:
    stored before ``before``."""
    if lock is not None:
        [(got,)] = yield lock
        if not got:
            return -1, 0
    events = yield (
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at<? LIMIT ?) "
        "RETURNING id",
        (before, batch),
    )
    n = 0
    for table, prunable in _PRUNABLE:
        rows = yield (
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {prunable} "
            "AND finished_at<? LIMIT ?) RETURNING id",
            (before, batch),
        )
        ids = [r[0] for r in rows]
        yield from _forget(d, ids)
        n += len(ids)
    return n, len(events)


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
    rows = yield (
        "SELECT o.subscription_id, COUNT(*), "
        "COUNT(CASE WHEN a.status BETWEEN 200 AND 299 THEN 1 END) "
        f"FROM {outgoing_attempts} WHERE a.at>=? GROUP BY 1",
        (since,),
    )
    stats.attempts(rows)
    failed = f"{outgoing_attempts} WHERE a.error IS NOT NULL"
    rows = yield (_latest("o.subscription_id", "a.error", "a.at", failed), ())
    stats.last_errors("outgoing", rows)
    finished_at = "COALESCE(finished_at, received_at)"
    failed = "inbox WHERE last_error IS NOT NULL"
    rows = yield (_latest("hook_id", "last_error", finished_at, failed), ())
    stats.last_errors("incoming", rows)
    # The latest success, so that an error from before it reads as over.
    rows = yield (
        f"SELECT o.subscription_id, MAX(a.at) FROM {outgoing_attempts} "
        "WHERE a.status BETWEEN 200 AND 299 GROUP BY 1",
        (),
    )
    stats.last_successes("outgoing", rows)
    rows = yield (
        "SELECT hook_id, MAX(finished_at) FROM inbox WHERE status IN ('done', 'dropped') "
        "GROUP BY 1",
        (),
    )
    stats.last_successes("incoming", rows)
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


def delivery_listing(kind: str, query: DeliveryQuery, greatest: str) -> tuple[str, list[Any]]:
    """The SQL (``?`` placeholders) and arguments of ``list_deliveries``, for every backend
    (``greatest``: the dialect's larger-of-two function)."""
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
        # A substring of the id, the session key or the last error (or, outgoing, of the
        # event id or type); LIKE's wildcards escaped.
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", query.search) + "%"
        columns = ["id", "session", "last_error"]
        if kind == "outgoing":
            columns += ["event_id", "event_type"]
        where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in columns) + ")")
        args.extend([pattern] * len(columns))
    if query.cursor is not None:
        where.append(f"({created}, id) < (?, ?)")
        args.extend(query.cursor)
    order = f"{created} DESC, id DESC"
    if query.finished_after is not None:
        order = "finished_at, id"
    event = "event_type, causation" if kind == "outgoing" else "NULL, NULL"
    made = attempts_made(greatest, table)
    sql = (
        f"SELECT id, {target}, status, {made}, {created}, finished_at, next_attempt_at, "
        f"last_error, session, {event} FROM {table}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT ?"
    )
    return sql, [*args, query.limit]


def attempts_made(greatest: str, table: str) -> str:
    """The attempts a delivery of ``table`` has had, replays included, as an SQL expression.

    The row's ``attempts`` counts the current round only (a replay starts the retry budget
    over); the history keeps every outgoing attempt and every failed incoming one, numbered on
    across replays, so an incoming delivery that succeeded had one more than its history."""
    history = f"(SELECT COUNT(*) FROM attempts h WHERE h.delivery_id = {table}.id)"
    if table == "inbox":
        history += " + CASE WHEN status IN ('done', 'dropped') THEN 1 ELSE 0 END"
    return f"{greatest}(attempts, {history})"


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
                "last_success_at": None,
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

    def last_successes(self, kind: str, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (target, at)."""
        for target, at in rows:
            self._entry(kind, target)["last_success_at"] = None if at is None else float(at)

    def result(self) -> list[dict[str, Any]]:
        return list(self._stats.values())


# ---------------------------------------------------------------------------- the chain


def event_listing(query: EventQuery) -> Statement:
    """``list_events``: newest first; ``query.cursor`` is ``(created_at, id)`` of the last
    event of the previous page."""
    where: list[str] = []
    args: list[Any] = []
    if query.type is not None:
        where.append("type=?")
        args.append(query.type)
    if query.session is not None:
        where.append(events_of_session(query.session))
        args.append(query.session)
    if query.causation is not None:
        where.append("causation=?")
        args.append(query.causation)
    if query.since is not None:
        where.append("created_at>=?")
        args.append(query.since)
    if query.cursor is not None:
        where.append("(created_at, id) < (?, ?)")
        args.extend(query.cursor)
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM events"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY created_at DESC, id DESC LIMIT ?"
    )
    return sql, [*args, query.limit]


def caused_deliveries(
    d: Dialect, causations: list[str], event_ids: list[str], ids: list[str]
) -> Query[list[CausedDelivery]]:
    """The outgoing deliveries of these events: found by the cause they share (indexed) or,
    for events nothing caused, by their derived row ids ``ids``; oldest first."""
    made = attempts_made(d.greatest, "outbox")
    columns = (
        f"SELECT id, event_id, subscription_id, status, {made}, last_error, created_at, seq "
        "FROM outbox WHERE "
    )
    rows: dict[str, Sequence[Any]] = {}
    if causations:
        found = yield (
            columns + f"{d.in_ids.format('causation')} AND {d.in_ids.format('event_id')}",
            (d.ids(causations), d.ids(event_ids)),
        )
        rows.update((r[0], r) for r in found)
    if ids:
        found = yield (columns + d.in_ids.format("id"), (d.ids(ids),))
        rows.update((r[0], r) for r in found)
    ordered = sorted(rows.values(), key=lambda r: r[-1])
    return [CausedDelivery(*r[:-1]) for r in ordered]


#: A session's timeline: every incoming delivery, event and outgoing delivery of it, as
#: (kind, id, at, rank, target, status, attempts, last_error, type, causation, source,
#: event_id). ``rank`` orders what happened at the same moment: the delivery, its event,
#: the event's deliveries.
def session_timeline(
    d: Dialect, session: str, cursor: tuple[float, int, str] | None, limit: int
) -> Statement:
    incoming = attempts_made(d.greatest, "inbox")
    outgoing = attempts_made(d.greatest, "outbox")
    union = (
        f"SELECT 'incoming' AS kind, id, received_at AS at, 0 AS rank, hook_id AS target, "
        f"status, {incoming} AS attempts, last_error, NULL AS type, NULL AS causation, "
        "NULL AS source, NULL AS event_id FROM inbox WHERE session=? UNION ALL "
        "SELECT 'event', id, created_at, 1, NULL, NULL, NULL, NULL, type, causation, source, "
        f"NULL FROM events WHERE {events_of_session(session)} UNION ALL "
        f"SELECT 'outgoing', id, created_at, 2, subscription_id, status, {outgoing}, "
        "last_error, event_type, causation, NULL, event_id FROM outbox WHERE session=?"
    )
    args: list[Any] = [session, session, session]
    where = ""
    if cursor is not None:
        where = " WHERE (at, rank, id) > (?, ?, ?)"
        args.extend(cursor)
    sql = f"SELECT * FROM ({union}) timeline{where} ORDER BY at, rank, id LIMIT ?"
    return sql, [*args, limit]

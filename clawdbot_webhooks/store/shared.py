"""The store methods both backends share, made of the queries in ``queries``: a backend
names its ``dialect`` and ``migrations`` and says how it runs a query (``_query``)."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from clawdbot_webhooks.store.queries import (
    Dialect,
    Query,
    Statement,
    attempts_made,
    caused_deliveries,
    delivery_listing,
    delivery_stats,
    event_listing,
    fetch,
    prune_finished,
    purge_dead,
    purge_dead_ids,
    queue_counts,
    requeue,
    revive,
    schema_status,
    session_timeline,
    throughput,
)
from clawdbot_webhooks.store.records import (
    Attempt,
    CausedDelivery,
    DeadLetter,
    DeliveryQuery,
    DeliverySummary,
    EventQuery,
    EventRecord,
    IncomingRecord,
    OutgoingRecord,
    TimelineItem,
)
from clawdbot_webhooks.store.rows import (
    EVENT_COLUMNS,
    OUTBOX_COLUMNS,
    event_record,
    incoming_record,
    outgoing_record,
)
from clawdbot_webhooks.store.schema import Migration, SchemaStatus

T = TypeVar("T")


class SharedQueries:
    """The store methods both backends answer with the shared queries. A backend names its
    ``dialect`` and ``migrations`` and runs a query with ``_query`` (``atomic``: in one
    transaction, where that is a choice)."""

    dialect: ClassVar[Dialect]
    migrations: ClassVar[Sequence[Migration]]

    @property
    def display_url(self) -> str:
        raise NotImplementedError

    def _query(self, query: Query[T], *, atomic: bool = False) -> Awaitable[T]:
        raise NotImplementedError

    def _retention_lock(self) -> Statement | None:
        """Where processes share the store, a statement that takes the retention lock for
        the rest of the transaction, if it is free, and answers whether it did."""
        return None

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

    async def set_incoming_session(self, delivery_id: str, session: str) -> None:
        """Give a delivery the session its persistent key rendered to: it was stored without
        one when the key rendered empty, and a replay after the key was fixed renders it."""
        await self._query(fetch("UPDATE inbox SET session=? WHERE id=?", session, delivery_id))

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

    async def prune_finished(self, before: float, batch: int = 5000) -> int:
        """Delete deliveries finished before ``before`` (incoming done or dropped and no
        longer guarding a dedup key, outgoing done) with their attempts, and the events
        stored before it; dead letters stay.
        Returns how many deliveries were deleted. Where processes share the store, one at a
        time does it and the others skip."""
        total = 0
        while True:  # in batches, so one prune never holds the database for long
            n, events = await self._query(
                prune_finished(self.dialect, before, batch, self._retention_lock()), atomic=True
            )
            if n < 0:
                return total
            total += n
            if n < batch and events < batch:
                return total

    # -- dead letters

    async def dead_letters(self, since: float | None = None) -> list[DeadLetter]:
        lower = since or 0.0
        incoming = attempts_made(self.dialect.greatest, "inbox")
        outgoing = attempts_made(self.dialect.greatest, "outbox")
        rows = await self._query(
            fetch(
                f"SELECT id, 'incoming', hook_id, received_at, {incoming}, last_error "
                "FROM inbox WHERE status='dead' AND received_at>=? UNION ALL "
                f"SELECT id, 'outgoing', subscription_id, created_at, {outgoing}, last_error "
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
        sql, args = delivery_listing(kind, query, self.dialect.greatest)
        return [DeliverySummary(kind, *row) for row in await self._query(fetch(sql, *args))]

    async def delivery_stats(self, since: float) -> list[dict[str, Any]]:
        """Per target of each direction since ``since``: deliveries by status, and for
        outgoing ones the attempts, how many succeeded, and the latest failed attempt."""
        return await self._query(delivery_stats(since))

    async def throughput(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """Finished deliveries per ``bucket`` seconds since ``since``: each row is
        ``{"at", "kind", "status", "count"}`` (``at`` is the bucket's start)."""
        return await self._query(throughput(self.dialect, since, bucket))

    # -- events and what caused what

    async def get_event(self, event_id: str) -> EventRecord | None:
        rows = await self._query(fetch(f"SELECT {EVENT_COLUMNS} FROM events WHERE id=?", event_id))
        return event_record(rows[0]) if rows else None

    async def incoming_ids_from(self, prefix: str) -> list[str]:
        """The ids of incoming deliveries that start with ``prefix`` (by the id's index). The
        range ends with the ids' own alphabet (digits, lower-case letters), which sorts alike
        in every collation; a character outside it may be ignored by one (ICU's)."""
        sql = "SELECT id FROM inbox WHERE id BETWEEN ? AND ? ORDER BY id"
        return [r[0] for r in await self._query(fetch(sql, prefix, prefix + "z" * 26))]

    async def list_events(self, query: EventQuery) -> list[EventRecord]:
        """Stored events, newest first (``EventQuery`` says which)."""
        sql, args = event_listing(query)
        return [event_record(r) for r in await self._query(fetch(sql, *args))]

    async def events_caused_by(self, delivery_id: str) -> list[EventRecord]:
        """The events whose causation is ``delivery_id``, in the order they were stored."""
        rows = await self._query(
            fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE causation=? ORDER BY created_at, id",
                delivery_id,
            )
        )
        return [event_record(r) for r in rows]

    async def deliveries_of_events(
        self, events: Sequence[EventRecord], ids: Sequence[str] = ()
    ) -> list[CausedDelivery]:
        """The outgoing deliveries of ``events``, oldest first: those of caused events by
        their cause; ``ids`` (the rows' derived ids) finds those of events nothing caused."""
        causations = sorted({e.causation for e in events if e.causation})
        query = caused_deliveries(self.dialect, causations, [e.id for e in events], list(ids))
        return await self._query(query)

    async def session_timeline(
        self, session: str, cursor: tuple[float, int, str] | None, limit: int
    ) -> list[TimelineItem]:
        """A session's incoming deliveries, events and outgoing deliveries in time order;
        ``cursor`` is ``(at, rank, id)`` of the last item of the previous page."""
        sql, args = session_timeline(self.dialect, session, cursor, limit)
        items = []
        for row in await self._query(fetch(sql, *args)):
            kind, id_, at, rank, target, status, attempts, error, etype, cause, source, evt = row
            fields: dict[str, Any]
            if kind == "incoming":
                fields = {"hook": target, "status": status, "attempts": attempts}
                fields["last_error"] = error
            elif kind == "event":
                fields = {"type": etype, "causation": cause, "source": source}
            else:
                fields = {"subscription": target, "status": status, "attempts": attempts}
                fields.update(last_error=error, event_id=evt, event_type=etype, causation=cause)
            items.append(TimelineItem(kind, id_, float(at), int(rank), fields))
        return items

    async def requeue(self, delivery_id: str, kind: str) -> bool:
        """Make a finished delivery (done, dropped or dead) of ``kind`` (incoming, outgoing)
        pending again, attempts starting over; False when there is no such finished one."""
        return await self._query(requeue(self.dialect, delivery_id, kind), atomic=True)

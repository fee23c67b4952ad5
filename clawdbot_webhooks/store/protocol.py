"""What the rest of the runtime asks of a store (``Store``), the error every backend raises
when its database cannot be reached, and how a store's URL is shown."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Protocol

from clawdbot_webhooks.store.records import (
    Attempt,
    CausedDelivery,
    DeadLetter,
    DeliveryQuery,
    DeliverySummary,
    EventQuery,
    EventRecord,
    IncomingRecord,
    OutgoingOutcome,
    OutgoingRecord,
    TimelineItem,
)
from clawdbot_webhooks.store.schema import SchemaStatus


class StoreUnavailable(Exception):
    """The store cannot take writes (closed, shutting down, or the database is gone)."""


class Store(Protocol):
    """The storage interface: everything the runtime, outbox, dead-letter CLI, admin API and
    ``db`` commands ask of a backend. ``sqlite.SQLiteStore`` and ``postgres.PostgresStore``
    implement it; any method may raise ``StoreUnavailable`` when the database is out of reach."""

    #: True when one process owns the store (SQLite): it frees every lease at start-up.
    #: False when processes share it (PostgreSQL): a dead process's leases simply expire.
    single_process: bool

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and errors."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def schema_status(self) -> SchemaStatus: ...

    # inbox (the two on every delivery's path return an awaitable: a backend may start the
    # work at once and need no coroutine of its own)
    def add_incoming(
        self, record: IncomingRecord, lease: float, dedup_since: float | None = None
    ) -> Awaitable[bool]: ...
    async def prune_dedup(self, before: float) -> int: ...
    async def find_duplicate(self, hook_id: str, dedup_key: str) -> str | None: ...
    async def claim_incoming(self, limit: int, lease: float) -> list[IncomingRecord]: ...
    async def next_incoming_due(self) -> float | None: ...
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
    ) -> Awaitable[None]: ...
    def record_outcome(
        self,
        delivery_id: str,
        status: str,
        *,
        attempts: int,
        result: Any = None,
        message: str | None = None,
    ) -> None:
        """``finish_incoming`` for a delivery that is done or dropped, without waiting for the
        write: it goes with the next batch. A failure is logged; the delivery's lease then runs
        out and it runs again (at least once, never lost)."""
        ...

    async def set_incoming_session(self, delivery_id: str, session: str) -> None: ...
    async def get_incoming(self, delivery_id: str) -> IncomingRecord | None: ...
    async def release_leases(self) -> None: ...
    async def count_incoming(self, status: str | None = None) -> int: ...
    async def probe_write(self) -> None:
        """Commit a write that changes nothing (``/readyz`` after a failed write): whether
        the store takes writes again, which a read cannot tell."""
        ...

    # outbox
    async def add_outgoing(
        self, records: Sequence[OutgoingRecord], lease: float, event: EventRecord | None = None
    ) -> list[str]:
        """Store these deliveries and ``event``, the event they deliver, in one transaction;
        the ids that were new and, when ``lease`` > 0, leased to this process: a row whose
        lane has an earlier pending row that this process does not hold is stored unleased,
        to be claimed in its turn (lanes keep their order across restarts and processes)."""
        ...

    def record_event(self, event: EventRecord) -> None:
        """Store an event no subscription takes, without waiting for the write: it goes with
        the next batch (a failure is logged)."""
        ...

    async def claim_outgoing(
        self, limit: int, lease: float, exclude: Sequence[str] = ()
    ) -> list[OutgoingRecord]: ...
    async def finish_outgoing_many(self, outcomes: Sequence[OutgoingOutcome]) -> list[str]:
        """Record the outcomes; the ids among them another process's lease kept out (it took
        the deliveries over)."""
        ...

    async def release_outgoing(self, ids: Sequence[str]) -> None: ...
    async def claim_outgoing_ids(
        self, ids: Sequence[str], lease: float
    ) -> list[OutgoingRecord]: ...
    async def next_outgoing_due(self) -> float | None: ...
    async def get_outgoing(self, delivery_id: str) -> OutgoingRecord | None: ...
    async def attempts(self, delivery_id: str) -> list[Attempt]: ...

    # leases and retention
    async def renew_leases(
        self, incoming: Sequence[str], outgoing: Sequence[str], lease: float
    ) -> int: ...
    async def prune_finished(self, before: float, batch: int = 5000) -> int: ...

    # dead letters
    async def dead_letters(self, since: float | None = None) -> list[DeadLetter]: ...
    async def revive(self, ids: Iterable[str]) -> list[str]: ...
    async def purge_dead(self, before: float | None = None) -> int: ...
    async def purge_dead_ids(self, ids: Iterable[str]) -> int: ...

    # inspection
    async def queue_counts(self) -> dict[str, int]: ...
    async def list_deliveries(self, kind: str, query: DeliveryQuery) -> list[DeliverySummary]: ...
    async def delivery_stats(self, since: float) -> list[dict[str, Any]]: ...
    async def throughput(self, since: float, bucket: float) -> list[dict[str, Any]]: ...
    async def requeue(self, delivery_id: str, kind: str) -> bool: ...

    # events and what caused what
    async def get_event(self, event_id: str) -> EventRecord | None: ...
    async def incoming_ids_from(self, prefix: str) -> list[str]: ...
    async def list_events(self, query: EventQuery) -> list[EventRecord]: ...
    async def events_caused_by(self, delivery_id: str) -> list[EventRecord]: ...
    async def deliveries_of_events(
        self, events: Sequence[EventRecord], ids: Sequence[str] = ()
    ) -> list[CausedDelivery]: ...
    async def session_timeline(
        self, session: str, cursor: tuple[float, int, str] | None, limit: int
    ) -> list[TimelineItem]: ...


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url, flags=re.I)

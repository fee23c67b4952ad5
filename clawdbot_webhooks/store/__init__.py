"""Durable storage: the inbox of incoming deliveries, the outbox of outgoing ones, their
attempts and dead letters.

``Store`` (``protocol``) is the interface the rest of the runtime uses, and ``records`` the
data it passes; ``open_store`` picks the backend from ``storage.url``: SQLite (``sqlite``
over ``sqlite_writer``, one process) or PostgreSQL (``postgres`` over ``postgres_pool`` and
``postgres_batches``, several processes sharing one queue). Each versions its schema with
numbered migrations (``sqlite_schema``, ``postgres_schema``) applied at start-up. What both
write and read alike is written once: columns and rows in ``rows``, the queries in
``queries`` (parametrised by a ``Dialect``), the methods made of them in ``shared``.
``maintenance`` runs the store's background loops, ``dedup`` names a delivery for replay
protection.
"""

from __future__ import annotations

from pathlib import Path

from clawdbot_webhooks.store.protocol import Store, StoreUnavailable, redact_url
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
    attempts_made,
)
from clawdbot_webhooks.store.schema import Migration, SchemaStatus
from clawdbot_webhooks.store.sqlite import INLINE_BODY_BYTES, SQLiteStore

__all__ = [
    "INLINE_BODY_BYTES",
    "Attempt",
    "CausedDelivery",
    "DeadLetter",
    "DeliveryQuery",
    "DeliverySummary",
    "EventQuery",
    "EventRecord",
    "IncomingRecord",
    "Migration",
    "OutgoingOutcome",
    "OutgoingRecord",
    "SQLiteStore",
    "SchemaStatus",
    "Store",
    "StoreUnavailable",
    "TimelineItem",
    "attempts_made",
    "open_store",
    "redact_url",
]


def open_store(
    url: str,
    synchronous: str = "NORMAL",
    *,
    schema: str | None = None,
    pool_size: int = 10,
    migrate: bool = True,
) -> Store:
    """The backend for ``url``: ``sqlite:///PATH`` or ``postgresql://...`` (``schema`` picks
    the PostgreSQL schema the tables live in; ``migrate=False`` opens without upgrading)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///") :]), synchronous, migrate=migrate)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here: asyncpg is an optional dependency, needed only for PostgreSQL.
        from clawdbot_webhooks.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema, pool_size=pool_size, migrate=migrate)
    raise ValueError(
        f"unsupported storage url {redact_url(url)!r} (expected sqlite:///PATH or postgresql://...)"
    )

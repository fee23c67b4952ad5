"""The PostgreSQL schema and its migrations."""

from __future__ import annotations

import time

import asyncpg

from clawdbot_webhooks.store.schema import Migration

#: The PostgreSQL schema's history; a new version appends a migration, never edits an old one.
MIGRATIONS = [
    Migration(
        1,
        "inbox, outbox, attempts",
        """
CREATE TABLE inbox (
    id TEXT PRIMARY KEY,
    hook_id TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    content_type TEXT NOT NULL,
    body BYTEA NOT NULL,
    headers TEXT NOT NULL,
    query TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    session TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_owner TEXT,
    last_error TEXT,
    result TEXT,
    finished_at DOUBLE PRECISION,
    dedup_key TEXT
);
CREATE INDEX inbox_pending ON inbox (received_at) WHERE status = 'pending';
CREATE INDEX inbox_status ON inbox (status, finished_at);
CREATE UNIQUE INDEX inbox_dedup ON inbox (hook_id, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX inbox_received ON inbox (received_at);
CREATE TABLE outbox (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    session TEXT,
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_owner TEXT,
    last_error TEXT,
    finished_at DOUBLE PRECISION
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE status = 'pending';
CREATE INDEX outbox_pending_lane ON outbox (subscription_id, session, seq)
    WHERE status = 'pending';
CREATE INDEX outbox_status ON outbox (status, finished_at);
CREATE INDEX outbox_created ON outbox (created_at);
CREATE TABLE attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    status INTEGER,
    latency_ms DOUBLE PRECISION NOT NULL,
    response TEXT,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
);
CREATE INDEX attempts_at ON attempts (at);
""",
    ),
    # Every published event, subscribed or not, so a webhook can be followed to what it caused;
    # an outgoing row names the delivery that caused its event. Rows stored before take it from
    # their payload: the event's compact JSON ends with its causation (a template's body may
    # not, and stays NULL). A template's body may hold a NUL or bytes that are not UTF-8,
    # which are no text: should any payload be such, the rows are read one at a time.
    Migration(
        2,
        "events, and the cause of outgoing deliveries",
        r"""
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    session TEXT,
    causation TEXT,
    source TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_causation ON events (causation) WHERE causation IS NOT NULL;
CREATE INDEX events_session ON events (session, created_at) WHERE session IS NOT NULL;
ALTER TABLE outbox ADD COLUMN causation TEXT;
DO $$
BEGIN
    UPDATE outbox SET causation = substring(
        convert_from(payload, 'UTF8') from '"causation":"([^"\\]*)"}$'
    ) WHERE position('"causation":"'::bytea in payload) > 0;
EXCEPTION WHEN character_not_in_repertoire THEN
    -- Some payload is no text: row by row, and such a body keeps no cause.
    DECLARE
        r record;
    BEGIN
        FOR r IN SELECT id, payload FROM outbox
                WHERE position('"causation":"'::bytea in payload) > 0 LOOP
            BEGIN
                UPDATE outbox SET causation = substring(
                    convert_from(r.payload, 'UTF8') from '"causation":"([^"\\]*)"}$'
                ) WHERE id = r.id;
            EXCEPTION WHEN character_not_in_repertoire THEN
                NULL;
            END;
        END LOOP;
    END;
END $$;
CREATE INDEX outbox_causation ON outbox (causation) WHERE causation IS NOT NULL;
""",
    ),
    # See SQLite's migration 8: ephemeral sessions' random keys stay out of the index.
    Migration(
        3,
        "events indexed by session only for lasting sessions",
        "DROP INDEX IF EXISTS events_session;\n"
        "CREATE INDEX events_session ON events (session, created_at) "
        "WHERE session NOT LIKE 'hook:________-____-____-____-____________';",
    ),
    # See SQLite's migration 9.
    Migration(4, "the message a delivery sent", "ALTER TABLE inbox ADD COLUMN message TEXT;"),
]

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


async def migrate(conn: asyncpg.Connection, lock: int) -> None:
    """Apply the migrations this database lacks, each in a transaction of its own, under the
    session-level advisory lock ``lock``: processes starting together wait here and find the
    work done."""
    await conn.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        await conn.execute(MIGRATIONS_TABLE)
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for m in MIGRATIONS:
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    time.time(),
                )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock)

"""The SQLite schema and its migrations."""

from __future__ import annotations

import sqlite3
import time

from clawdbot_webhooks.store.schema import Migration

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id TEXT PRIMARY KEY,
    hook_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    query TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    session TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    result TEXT,
    finished_at REAL,
    dedup_key TEXT
);
CREATE INDEX IF NOT EXISTS inbox_due ON inbox (status, next_attempt_at);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_dedup ON inbox (hook_id, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    session TEXT,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (subscription_id, session, seq);
CREATE INDEX IF NOT EXISTS outbox_pending_lane ON outbox (subscription_id, session, seq)
    WHERE status='pending';
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    at REAL NOT NULL,
    status INTEGER,
    latency_ms REAL NOT NULL,
    response TEXT,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
);
"""

#: The SQLite schema's history; a new version appends a migration, never edits an old one.
#: Version 1 is written with IF NOT EXISTS, so stores made before versioning adopt it as is.
SQLITE_MIGRATIONS = [
    Migration(1, "inbox, outbox, attempts", SCHEMA),
    # A body in its own table: recording an action's outcome rewrites the inbox row, and SQLite
    # rewrites a row whole, so a 1 MB body there was written again on every status change.
    Migration(
        2,
        "incoming bodies apart from their status",
        "CREATE TABLE IF NOT EXISTS inbox_bodies (id TEXT PRIMARY KEY, body BLOB NOT NULL);",
    ),
    # Claims walk pending deliveries oldest first; with a backlog of many thousands a sort of
    # all of them per claim would cost more than the work claimed.
    Migration(
        3,
        "pending incoming deliveries by arrival",
        "CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (received_at) WHERE status = 'pending';",
    ),
    # Each change of status moved an entry of an index over every row by status. Queries by
    # status look only at pending deliveries (inbox_pending) or dead letters, so a partial
    # index of the dead ones is all that is needed beside it.
    Migration(
        4,
        "incoming deliveries indexed by status only while pending or dead",
        "DROP INDEX IF EXISTS inbox_due;\n"
        "CREATE INDEX IF NOT EXISTS inbox_dead ON inbox (received_at) WHERE status = 'dead';",
    ),
    # The outbox likewise. Beside the index by status, each delivery went into one of every
    # row by session: sessions interleave, so that was a page of its own to write per
    # delivery. Claims walk the pending rows in order (outbox_pending, as on PostgreSQL),
    # lanes look at the pending rows of their session (outbox_pending_lane), dead letters
    # have outbox_dead; nothing else asks for rows by status or session.
    Migration(
        5,
        "outgoing deliveries indexed by status and session only while pending or dead",
        "DROP INDEX IF EXISTS outbox_due;\n"
        "DROP INDEX IF EXISTS outbox_order;\n"
        "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE status = 'pending';\n"
        "CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (created_at) WHERE status = 'dead';",
    ),
    # ``/readyz`` after a failed write asks for a write of a delivery's size: on a full disk
    # a one-page write still fits in the space the failed one left in the WAL file.
    Migration(
        6,
        "a row for readiness probes to write",
        "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, filler BLOB NOT NULL);",
    ),
    # Every published event, subscribed or not, so a webhook can be followed to what it caused;
    # an outgoing row names the delivery that caused its event (taken from the payloads of the
    # rows stored before, where the payload is the event's JSON rather than a template's body).
    Migration(
        7,
        "events, and the cause of outgoing deliveries",
        """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    session TEXT,
    causation TEXT,
    source TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
CREATE INDEX IF NOT EXISTS events_causation ON events (causation) WHERE causation IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_session ON events (session, created_at)
    WHERE session IS NOT NULL;
ALTER TABLE outbox ADD COLUMN causation TEXT;
UPDATE outbox SET causation = json_extract(CAST(payload AS TEXT), '$.causation')
    WHERE json_valid(CAST(payload AS TEXT));
CREATE INDEX IF NOT EXISTS outbox_causation ON outbox (causation) WHERE causation IS NOT NULL;
""",
    ),
    # An ephemeral session's key is random: each of its events went to an index page of its
    # own, the dearest part of storing an event. Only lasting sessions are indexed now.
    Migration(
        8,
        "events indexed by session only for lasting sessions",
        "DROP INDEX IF EXISTS events_session;\n"
        "CREATE INDEX IF NOT EXISTS events_session ON events (session, created_at) "
        "WHERE session NOT LIKE 'hook:________-____-____-____-____________';",
    ),
    # The text a delivery sent to the chat, kept in its row when its message_received event
    # is not stored (an ephemeral session's, nobody taking it): the views make the event.
    Migration(9, "the message a delivery sent", "ALTER TABLE inbox ADD COLUMN message TEXT;"),
]

#: The probe's write: 64 KB rewritten and committed.
PROBE_WRITE = "INSERT OR REPLACE INTO write_probe VALUES (1, zeroblob(65536))"

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at REAL NOT NULL)"
)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this database lacks, each in a transaction of its own."""
    conn.execute(MIGRATIONS_TABLE)
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for m in SQLITE_MIGRATIONS:
        if m.version in done:
            continue
        conn.executescript(f"BEGIN IMMEDIATE; {m.sql}")
        conn.execute(
            "INSERT OR IGNORE INTO schema_migrations VALUES (?,?,?)",
            (m.version, m.name, time.time()),
        )
        conn.execute("COMMIT")

"""The tables' columns as both backends read and write them: the column lists, a row turned
into its record, and the parameters of the writes both backends make the same way. SQL here
uses ``?`` placeholders; PostgreSQL numbers them (``postgres.numbered``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

from clawdbot_webhooks import jsontext
from clawdbot_webhooks.store.records import (
    Attempt,
    EventRecord,
    IncomingRecord,
    OutgoingOutcome,
    OutgoingRecord,
)

#: Per direction: its table, its target column, its creation-time column.
KIND_COLUMNS = {
    "incoming": ("inbox", "hook_id", "received_at"),
    "outgoing": ("outbox", "subscription_id", "created_at"),
}

#: An inbox row in the order of ``incoming_record``.
INBOX_COLUMNS = (
    "id, hook_id, received_at, content_type, body, headers, query, client_ip, session, "
    "status, attempts, next_attempt_at, last_error, result, dedup_key, finished_at, message"
)
#: An outbox row in the order of ``outgoing_record``.
OUTBOX_COLUMNS = (
    "id, event_id, subscription_id, event_type, session, payload, created_at, status, "
    "attempts, next_attempt_at, last_error, seq, causation"
)
#: An events row in the order of ``EventRecord.values`` and ``event_record``.
EVENT_COLUMNS = "id, type, timestamp, session, causation, source, payload, created_at"

#: Sessions the ``events_session`` index holds: not the ephemeral ones (``hook:`` and a UUID,
#: one delivery's each), whose random keys would put every event on an index page of its own;
#: their events are found through their delivery. The same text as the index's (SQLite's
#: migration 8, PostgreSQL's 3) in the query, so that both see the partial index applies.
LASTING_SESSION = "session NOT LIKE 'hook:________-____-____-____-____________'"
_EPHEMERAL_SHAPE = re.compile(r"hook:.{8}-.{4}-.{4}-.{4}-.{12}", re.IGNORECASE | re.DOTALL)


def is_ephemeral(session: str) -> bool:
    """Whether a session key has the shape of an ephemeral session's (``hook:`` and a UUID)."""
    return _EPHEMERAL_SHAPE.fullmatch(session) is not None


def events_of_session(session: str) -> str:
    """The condition that finds a session's events, by the index where it holds them."""
    if is_ephemeral(session):
        return "session=?"
    return f"session=? AND {LASTING_SESSION}"


#: A published event; one published again (a re-run after a crash) is kept as it was.
#: ``ON CONFLICT DO NOTHING`` is both SQLite's and PostgreSQL's.
INSERT_EVENT = (
    f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)

#: A line of a delivery's history, numbered after its last one (numbers go on across replays).
RECORD_ATTEMPT = (
    "INSERT INTO attempts SELECT ?, COALESCE(MAX(number), 0) + 1, ?, ?, ?, ?, ? "
    "FROM attempts WHERE delivery_id=?"
)
#: An outgoing attempt's outcome, with ``outcome_params``.
FINISH_OUTGOING = (
    "UPDATE outbox SET status=?, attempts=?, last_error=?, next_attempt_at=?, "
    "lease_until=?, finished_at=? WHERE id=?"
)


def finish_params(
    delivery_id: str,
    status: str,
    attempts: int,
    result: Any,
    error: str | None,
    retry_at: float | None,
    message: str | None = None,
) -> tuple[Any, ...]:
    """The parameters of an incoming delivery's outcome (its UPDATE, in either backend); the
    delivery's id comes last."""
    return (
        status,
        attempts,
        None if result is None else jsontext.anything(result),
        None if error is None else storable(error),
        retry_at or 0.0,
        None if status == "pending" else time.time(),
        None if message is None else storable(message),
        delivery_id,
    )


def storable(text: str) -> str:
    """``text`` with what a text column cannot hold written as its escape: a NUL character
    (PostgreSQL's text refuses it) and a lone half of a UTF-16 pair (no UTF-8 holds it). An
    outcome must be recorded whatever text a payload or a plugin brought, else the delivery
    would run again and again, never counted; and both backends keep the same text."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def attempt_params(a: Attempt) -> tuple[Any, ...]:
    """The parameters of ``RECORD_ATTEMPT``."""
    response = None if a.response is None else storable(a.response)
    error = None if a.error is None else storable(a.error)
    return (a.delivery_id, a.at, a.status, a.latency_ms, response, error, a.delivery_id)


def outcome_params(outcomes: Sequence[OutgoingOutcome]) -> list[tuple[Any, ...]]:
    """The parameters of ``FINISH_OUTGOING``, one tuple per outcome."""
    now = time.time()
    return [
        (
            o.status,
            o.attempts,
            None if o.error is None else storable(o.error),
            o.retry_at or 0.0,
            o.hold_until,
            None if o.status == "pending" else now,
            o.delivery_id,
        )
        for o in outcomes
    ]


def incoming_record(row: Sequence[Any]) -> IncomingRecord:
    """An inbox row (``INBOX_COLUMNS``) as its record."""
    (
        id_,
        hook,
        received,
        ctype,
        body,
        headers,
        query,
        ip,
        session,
        status,
        attempts,
        due,
        error,
        result,
        dedup,
        finished,
        message,
    ) = row
    return IncomingRecord(
        id_,
        hook,
        received,
        ctype,
        bytes(body),
        json.loads(headers),
        json.loads(query),
        ip,
        session,
        status,
        attempts,
        due,
        error,
        None if result is None else json.loads(result),
        dedup,
        finished,
        message,
    )


def outgoing_record(row: Sequence[Any]) -> OutgoingRecord:
    """An outbox row (``OUTBOX_COLUMNS``) as its record."""
    (
        id_,
        event_id,
        sub,
        etype,
        session,
        payload,
        created,
        status,
        attempts,
        due,
        error,
        seq,
        cause,
    ) = row
    return OutgoingRecord(
        id_,
        event_id,
        sub,
        etype,
        session,
        bytes(payload),
        created,
        status,
        attempts,
        due,
        error,
        seq,
        cause,
    )


def event_record(row: Sequence[Any]) -> EventRecord:
    """An events row (``EVENT_COLUMNS``) as its record."""
    id_, etype, timestamp, session, causation, source, payload, created = row
    return EventRecord(
        id_, etype, timestamp, session, causation, source, bytes(payload), float(created)
    )

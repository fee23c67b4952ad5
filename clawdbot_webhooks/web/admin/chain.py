"""What one webhook caused, and what caused an outgoing delivery: the events a delivery
caused with the outgoing deliveries of each, an event with its deliveries, a session's
timeline. The admin API serves these views (``/admin/api/events``, ``/admin/api/sessions``,
``caused`` in an incoming delivery) and ``deliveries show`` prints them."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from clawdbot_webhooks.config import Settings
from clawdbot_webhooks.credentials import mask_url
from clawdbot_webhooks.events import message_received
from clawdbot_webhooks.outgoing.outbox import outbox_id, payload_bytes
from clawdbot_webhooks.sessions import ephemeral_events
from clawdbot_webhooks.store import (
    CausedDelivery,
    EventQuery,
    EventRecord,
    IncomingRecord,
    Store,
    TimelineItem,
)
from clawdbot_webhooks.store.rows import is_ephemeral

#: The largest page of events or of a session's timeline.
MAX_LIMIT = 500


class Holds(Protocol):
    """What the views read: the store and the settings (a ``Runtime``, or the CLI's pair)."""

    @property
    def store(self) -> Store: ...

    @property
    def settings(self) -> Settings: ...


class BadRequest(Exception):
    """A query parameter the API refuses (400)."""


# ---------------------------------------------------------------------------- views


def event_summary(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type,
        "timestamp": e.timestamp,
        "session": e.session,
        "causation": e.causation,
        "source": e.source,
    }


def delivery_summary(settings: Settings, d: CausedDelivery) -> dict[str, Any]:
    sub = next((s for s in settings.outgoing if s.id == d.subscription_id), None)
    return {
        "id": d.id,
        "subscription": d.subscription_id,
        "url": None if sub is None else mask_url(sub.url),
        "status": d.status,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": d.created_at,
    }


async def with_deliveries(rt: Holds, events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    """Each event's summary with its outgoing deliveries, in the order given."""
    if not events:
        return []
    # Events nothing caused are found by their rows' derived ids (one per subscription).
    derived = [
        outbox_id(e.id, s.id) for e in events if not e.causation for s in rt.settings.outgoing
    ]
    found = await rt.store.deliveries_of_events(events, derived)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for d in found:
        by_event.setdefault(d.event_id, []).append(delivery_summary(rt.settings, d))
    return [{**event_summary(e), "deliveries": by_event.get(e.id, [])} for e in events]


def made_events(rt: Holds, delivery: IncomingRecord) -> list[EventRecord]:
    """The events of the delivery's ephemeral session, as published had anyone taken them
    (``sessions.ephemeral_events``), and its ``message_received`` when the row kept the
    message (``Pipeline._said``), once it has run: none for a lasting session (its
    handler's ``sessionMode`` says, or, the handler gone, the key's shape)."""
    spec = rt.settings.routes.get(delivery.hook_id)
    ephemeral = is_ephemeral(delivery.session) if spec is None else not spec.persistent
    if not ephemeral or delivery.attempts == 0:  # never run: its handler was gone, say
        return []
    made = ephemeral_events(
        delivery.id, delivery.session, delivery.hook_id, delivery.received_at, delivery.finished_at
    )
    if delivery.message is not None:
        # Dated a microsecond after its session started, so that every view lists it next.
        at = delivery.received_at + 1e-6
        event = message_received(
            delivery.hook_id, delivery.message, delivery.session, delivery.id, at
        )
        made.append((event, at))
    return [EventRecord.of(e, "webhook", payload_bytes(e), at) for e, at in made]


def _with_made(stored: list[EventRecord], made: list[EventRecord]) -> list[EventRecord]:
    """Stored events and made ones not stored too (a subscription took them), in time order."""
    ids = {e.id for e in stored}
    return sorted(stored + [e for e in made if e.id not in ids], key=lambda e: e.created_at)


async def caused_events(rt: Holds, delivery: IncomingRecord) -> list[EventRecord]:
    """The events ``delivery`` caused, stored or made from its row, in time order."""
    return _with_made(await rt.store.events_caused_by(delivery.id), made_events(rt, delivery))


async def caused(rt: Holds, delivery: IncomingRecord) -> list[dict[str, Any]]:
    """The events ``delivery`` caused, in time order, each with its outgoing deliveries."""
    return await with_deliveries(rt, await caused_events(rt, delivery))


async def find_event(rt: Holds, event_id: str) -> EventRecord | None:
    """A stored event, or one made from its delivery's row: its id starts with the time of
    the delivery's id (``derived_id``), which narrows the deliveries to look at to those
    received in the same millisecond."""
    event = await rt.store.get_event(event_id)
    if event is not None:
        return event
    head = event_id.partition("_")[2][:10]
    if len(head) < 10:
        return None
    for delivery_id in await rt.store.incoming_ids_from(f"dlv_{head}"):
        delivery = await rt.store.get_incoming(delivery_id)
        for made in [] if delivery is None else made_events(rt, delivery):
            if made.id == event_id:
                return made
    return None


def _payload(e: EventRecord) -> Any:
    try:
        return json.loads(e.payload)
    except ValueError:
        return e.payload.decode("utf-8", "replace")


async def event_view(rt: Holds, e: EventRecord) -> dict[str, Any]:
    """An event with its outgoing deliveries and its payload (what subscribers receive)."""
    [view] = await with_deliveries(rt, [e])
    return {**view, "payload": _payload(e)}


def timeline_view(item: TimelineItem) -> dict[str, Any]:
    return {"kind": item.kind, "id": item.id, "at": item.at, **item.fields}


# ---------------------------------------------------------------------------- cursors


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, shape: tuple[type, ...]) -> tuple[Any, ...]:
    """A page's cursor (base64 of a JSON list) as values of ``shape``'s types; anything else,
    also a number no column holds (infinite, beyond 64 bits), is a 400."""
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(values, list) or len(values) != len(shape):
            raise ValueError
        decoded = tuple(kind(v) for kind, v in zip(shape, values, strict=True))
        if not all(_holdable(v) for v in decoded):
            raise ValueError
        return decoded
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise BadRequest("cursor: not a cursor from a previous page") from None


def _holdable(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return True


def listing_cursor(text: str) -> tuple[float, str]:
    """The cursor of a listing by time (deliveries, events): a time and an id."""
    created, item_id = decode_cursor(text, (float, str))
    return created, item_id


def timeline_cursor(text: str) -> tuple[float, int, str]:
    at, rank, item_id = decode_cursor(text, (float, int, str))
    return at, rank, item_id


def page_limit(request: web.Request) -> int:
    """``limit``: a whole number of rows, 1 to ``MAX_LIMIT`` (50 when absent)."""
    raw = request.query.get("limit") or "50"
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest("limit: not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}")
    return limit


def event_query(request: web.Request, since: float | None) -> EventQuery:
    cursor = request.query.get("cursor")
    return EventQuery(
        type=request.query.get("type") or None,
        session=request.query.get("session") or None,
        causation=request.query.get("causation") or None,
        since=since,
        cursor=listing_cursor(cursor) if cursor else None,
        limit=page_limit(request),
    )


async def list_events(rt: Holds, query: EventQuery) -> dict[str, Any]:
    rows = await rt.store.list_events(query)
    last = rows[-1] if len(rows) == query.limit and rows else None
    return {
        "items": [event_summary(e) for e in rows],
        "next_cursor": None if last is None else encode_cursor(last.created_at, last.id),
    }


async def session_page(rt: Holds, session: str, request: web.Request) -> dict[str, Any]:
    cursor = request.query.get("cursor")
    after = timeline_cursor(cursor) if cursor else None
    limit = page_limit(request)
    if is_ephemeral(session):
        items = await _ephemeral_timeline(rt, session, after, limit)
    else:
        items = await rt.store.session_timeline(session, after, limit)
    last = items[-1] if len(items) == limit and items else None
    return {
        "session": session,
        "items": [timeline_view(i) for i in items],
        "next_cursor": None if last is None else encode_cursor(last.at, last.rank, last.id),
    }


async def _ephemeral_timeline(
    rt: Holds, session: str, after: tuple[float, int, str] | None, limit: int
) -> list[TimelineItem]:
    """One delivery's session: what the store holds of it and the events made from the
    delivery's row (``made_events``), paged here. A key of that shape whose timeline does not
    fit one page of the store's is a lasting session's after all, paged by the store."""
    items = await rt.store.session_timeline(session, None, MAX_LIMIT)
    if len(items) == MAX_LIMIT:
        return await rt.store.session_timeline(session, after, limit)
    made: list[EventRecord] = []
    for item in items:
        delivery = await rt.store.get_incoming(item.id) if item.kind == "incoming" else None
        made += [] if delivery is None else made_events(rt, delivery)
    seen = {i.id for i in items}
    items += [
        TimelineItem(
            "event",
            e.id,
            e.created_at,
            1,
            {"type": e.type, "causation": e.causation, "source": e.source},
        )
        for e in made
        if e.id not in seen
    ]
    items.sort(key=lambda i: (i.at, i.rank, i.id))
    if after is not None:
        items = [i for i in items if (i.at, i.rank, i.id) > after]
    return items[:limit]

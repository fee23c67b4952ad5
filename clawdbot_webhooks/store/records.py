"""The records the store keeps and returns: incoming and outgoing deliveries, their attempts,
dead letters and listings. Plain data, the same whichever backend holds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clawdbot_webhooks_hookspecs import Delivery, Event


@dataclass(slots=True)
class IncomingRecord:
    id: str
    hook_id: str
    received_at: float
    content_type: str
    body: bytes
    headers: dict[str, str]
    query: dict[str, str]
    client_ip: str
    session: str
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    result: Any = None
    dedup_key: str | None = None
    #: When it was done, dropped or dead-lettered (epoch seconds); None while pending.
    finished_at: float | None = None
    #: The text its templates rendered for the chat (an action's ``template`` option), kept
    #: when its ``message_received`` event was not stored (see ``web/admin/chain.py``).
    message: str | None = None

    def as_delivery(self, payload: Any) -> Delivery:
        """What plugins and templates see of this delivery, on its next attempt."""
        return Delivery(
            id=self.id,
            hook_id=self.hook_id,
            received_at=self.received_at,
            content_type=self.content_type,
            body=self.body,
            payload=payload,
            headers=self.headers,
            query=self.query,
            client_ip=self.client_ip,
            session=self.session,
            attempt=self.attempts + 1,
        )


@dataclass(slots=True)
class OutgoingRecord:
    id: str
    event_id: str
    subscription_id: str
    event_type: str
    session: str | None
    payload: bytes
    created_at: float
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    seq: int = 0
    #: The incoming delivery (or outgoing one, for an ``error`` about it) that caused its
    #: event; None for events nothing caused and for rows stored before it was kept.
    causation: str | None = None

    def values(self) -> tuple[Any, ...]:
        """Its columns as both stores insert them (``rows.OUTBOX_COLUMNS`` without ``seq``)."""
        return (
            self.id,
            self.event_id,
            self.subscription_id,
            self.event_type,
            self.session,
            self.payload,
            self.created_at,
            self.status,
            self.attempts,
            self.next_attempt_at,
            self.last_error,
            self.causation,
        )


@dataclass(slots=True)
class Attempt:
    delivery_id: str
    number: int
    at: float
    status: int | None
    latency_ms: float
    response: str | None
    error: str | None


@dataclass(slots=True)
class OutgoingOutcome:
    """One attempt's result for ``finish_outgoing_many``; ``hold_until`` keeps the lease of a
    delivery whose retry this process waits for (0 frees it)."""

    delivery_id: str
    status: str
    attempts: int
    error: str | None = None
    retry_at: float | None = None
    hold_until: float = 0.0
    attempt: Attempt | None = None


@dataclass(slots=True)
class DeadLetter:
    id: str
    kind: str  # "incoming" | "outgoing"
    target: str  # hook id or subscription id
    created_at: float
    attempts: int
    error: str | None


@dataclass(slots=True)
class DeliverySummary:
    """A delivery without its body, as listings show it."""

    kind: str  # "incoming" | "outgoing"
    id: str
    target: str  # hook id or subscription id
    status: str
    attempts: int
    created_at: float
    finished_at: float | None
    next_attempt_at: float
    last_error: str | None
    session: str | None
    event_type: str | None
    #: Outgoing only: the delivery that caused its event.
    causation: str | None = None


@dataclass(slots=True)
class EventRecord:
    """An event as the bus published it: ``payload`` is ``Event.to_payload()`` as JSON;
    ``source`` says who published it (``webhook``, ``gateway``, ``bridge``, ``outbox``,
    ``plugin``); ``created_at`` is when it was stored (epoch seconds)."""

    id: str
    type: str
    timestamp: str
    session: str | None
    causation: str | None
    source: str
    payload: bytes
    created_at: float

    @classmethod
    def of(cls, event: Event, source: str, payload: bytes, at: float) -> EventRecord:
        """``event`` as stored at ``at``; ``payload`` is its ``to_payload()`` as JSON."""
        e = event
        return cls(e.id, e.type, e.timestamp, e.session, e.causation, source, payload, at)

    def values(self) -> tuple[Any, ...]:
        """Its columns in the order of ``rows.EVENT_COLUMNS``."""
        return (
            self.id,
            self.type,
            self.timestamp,
            self.session,
            self.causation,
            self.source,
            self.payload,
            self.created_at,
        )


@dataclass(slots=True)
class EventQuery:
    """Filters of ``list_events``: all optional but ``limit``; newest first."""

    type: str | None = None
    session: str | None = None
    causation: str | None = None
    since: float | None = None
    cursor: tuple[float, str] | None = None
    limit: int = 50


@dataclass(slots=True)
class CausedDelivery:
    """An outgoing delivery of an event, as the chain of a webhook shows it."""

    id: str
    event_id: str
    subscription_id: str
    status: str
    attempts: int
    last_error: str | None
    created_at: float


@dataclass(slots=True)
class TimelineItem:
    """One row of a session's timeline: ``kind`` incoming, event or outgoing; ``at`` when it
    was received, published or created; ``rank`` orders the three kinds at one moment;
    ``fields`` its summary."""

    kind: str
    id: str
    at: float
    rank: int
    fields: dict[str, Any]


@dataclass(slots=True)
class DeliveryQuery:
    """Filters of ``list_deliveries``: all optional but ``limit``."""

    status: str | None = None
    target: str | None = None
    since: float | None = None
    search: str | None = None
    cursor: tuple[float, str] | None = None
    #: Only deliveries finished after this time, oldest finished first (``deliveries tail``).
    finished_after: float | None = None
    limit: int = 50


def attempts_made(kind: str, status: str, counted: int, history: int) -> int:
    """The attempts a delivery has had, replays included: its row counts the current round
    only (a replay starts the retry budget over), its history every outgoing attempt and every
    failed incoming one, so an incoming delivery that succeeded had one more than that.
    ``queries.attempts_made`` says the same in SQL."""
    succeeded = kind == "incoming" and status in ("done", "dropped")
    return max(counted, history + succeeded)

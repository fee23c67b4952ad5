"""How a delivery, incoming or outgoing, becomes a dead letter.

The ``error`` event goes first (``publish`` returns once the outbox has stored it), the mark
second. A crash between the two leaves the delivery pending: it runs again after the restart,
fails again and publishes the same event id (derived from the delivery and its attempt count),
which the outbox holds already. In the other order a crash would lose the event for good,
since a dead delivery never runs again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from clawdbot_webhooks_hookspecs import Event

from clawdbot_webhooks.events import EventBus, derived_event_id
from clawdbot_webhooks.store import Store, attempts_made

log = logging.getLogger(__name__)


async def attempts_in_all(
    store: Store, kind: str, delivery_id: str, this_round: int, recording: bool
) -> int:
    """The attempts a delivery dying now has had in every round, replays included: the
    number the admin API shows once the dead mark (with the attempt that failed, when
    ``recording``) is stored. The ``error`` event's id counts them too, so the event of a
    replay that dies again is a new one, and one published again after a crash the same."""
    history = len(await store.attempts(delivery_id)) + recording
    return attempts_made(kind, "dead", this_round, history)


def error_event(
    delivery_id: str, session: str | None, attempts: int, data: dict[str, Any]
) -> Event:
    """The ``error`` event of a delivery that gave up after ``attempts``."""
    return Event(
        "error",
        data,
        session=session,
        causation=delivery_id,
        id=derived_event_id(delivery_id, "error", str(attempts)),
    )


async def dead_letter(
    bus: EventBus, event: Event, mark_dead: Callable[[], Awaitable[None]], *, source: str
) -> None:
    """Publish ``event`` (as ``source``), then ``mark_dead()``. An event the store refuses is
    logged and the delivery still marked: a dead letter stays visible in the queue either way."""
    try:
        await bus.publish(event, source=source)
    except Exception:
        log.exception(
            "the error event for dead delivery %s could not be published", event.causation
        )
    await mark_dead()

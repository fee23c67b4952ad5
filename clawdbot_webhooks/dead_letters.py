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

log = logging.getLogger(__name__)


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
    bus: EventBus, event: Event, mark_dead: Callable[[], Awaitable[None]]
) -> None:
    """Publish ``event``, then ``mark_dead()``. An event the store refuses is logged and the
    delivery still marked: a dead letter stays visible in the queue either way."""
    try:
        await bus.publish(event)
    except Exception:
        log.exception(
            "the error event for dead delivery %s could not be published", event.causation
        )
    await mark_dead()

"""Sessions: which session a delivery runs in, and the session_started/ended events.

An ephemeral session (``hook:<uuid>``) lives for one delivery's action. A persistent one
(``sessionMode: "persistent"``) lives while deliveries keep arriving and ends after
``sessions.idleTimeout`` seconds without one.

An ephemeral session's two events are published only when somebody takes them (a
subscription, a plugin). Otherwise they would only be stored, and the delivery's own row
already says all they would: the views make them from it (``ephemeral_events``), with the ids
they would have had.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from clawdbot_webhooks_hookspecs import Event, utc_timestamp

from clawdbot_webhooks.events import EventBus, derived_event_id

_RANDOM = random.Random(secrets.token_bytes(32))


#: The bits every version-4 UUID has fixed: version 4, variant 10.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def ephemeral_session() -> str:
    """``hook:`` and a version-4 UUID from a generator seeded once and formatted directly:
    unique, with neither a system call nor a ``uuid.UUID`` per delivery."""
    # ``%`` formats an int about twice as fast as an f-string's format spec.
    h = "%032x" % (_RANDOM.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"hook:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NO_TURN = contextlib.nullcontext()


@dataclass
class _Live:
    """A persistent session while it lives."""

    started: bool = False
    busy: int = 0
    timer: asyncio.TimerHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Sessions:
    def __init__(self, bus: EventBus, idle_timeout: float) -> None:
        self._bus = bus
        self._idle = idle_timeout
        self._live: dict[str, _Live] = {}

    def set_idle_timeout(self, seconds: float) -> None:
        """A reloaded config's ``sessions.idleTimeout``, for the timers started from now."""
        self._idle = seconds

    def turn(self, session: str, persistent: bool) -> AbstractAsyncContextManager[Any]:
        """Runs in one persistent session take turns, in the order they asked (asyncio locks
        are FIFO). An ephemeral session belongs to one delivery: nothing to take turns with."""
        return self._entry(session).lock if persistent else _NO_TURN

    def _entry(self, session: str) -> _Live:
        live = self._live.get(session)
        if live is None:
            live = self._live[session] = _Live()
        return live

    def begin(self, session: str, hook_id: str, persistent: bool, cause: str) -> Event | None:
        """A run starts in ``session``: its ``session_started`` event when the session is new
        and somebody listens (the caller publishes it, so nothing here is awaited)."""
        if not persistent:
            if self._bus.sending["session_started"]:
                return _started(session, hook_id, "ephemeral", cause)
            return None
        live = self._entry(session)
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        started, live.started = live.started, True
        live.busy += 1
        if not started and self._bus.wanted["session_started"]:
            return _started(session, hook_id, "persistent", cause)
        return None

    def finish(self, session: str, cause: str, persistent: bool) -> Event | None:
        """A run in ``session`` is over: an ephemeral session ends with it (its
        ``session_ended`` event, when somebody listens); a persistent one ends when idle."""
        if not persistent:
            if self._bus.sending["session_ended"]:
                return _ended(session, cause, "completed")
            return None
        live = self._live.get(session)
        if live is None:
            return None
        live.busy -= 1
        if live.busy == 0 and self._idle >= 0:
            loop = asyncio.get_running_loop()
            live.timer = loop.call_later(self._idle, self._idle_out, session, cause)
        return None

    def _idle_out(self, session: str, cause: str) -> None:
        if self._live.pop(session, None) is not None:
            self._bus.emit(_ended(session, cause, "idle"), source="webhook")

    def close(self) -> None:
        for live in self._live.values():
            if live.timer is not None:
                live.timer.cancel()
        self._live.clear()


def _started(session: str, hook_id: str, mode: str, cause: str, at: float | None = None) -> Event:
    return Event(
        "session_started",
        {"hook": hook_id, "mode": mode},
        session=session,
        causation=cause,
        id=derived_event_id(cause, session, "session_started"),
        timestamp=utc_timestamp(at),
    )


def _ended(session: str, cause: str, reason: str, at: float | None = None) -> Event:
    return Event(
        "session_ended",
        {"reason": reason},
        session=session,
        causation=cause,
        id=derived_event_id(cause, session, "session_ended"),
        timestamp=utc_timestamp(at),
    )


def ephemeral_events(
    delivery: str, session: str, hook_id: str, received: float, finished: float | None
) -> list[tuple[Event, float]]:
    """The events of a delivery's ephemeral session that were not published (nobody took
    them), each with when it happened: started when the delivery was received (its session
    key was given then), ended when it finished."""
    events = [(_started(session, hook_id, "ephemeral", delivery, received), received)]
    if finished is not None:
        events.append((_ended(session, delivery, "completed", finished), finished))
    return events

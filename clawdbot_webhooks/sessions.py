"""Sessions: which session a delivery runs in, and the session_started/ended events.

An ephemeral session (``hook:<uuid>``) lives for one delivery's action. A persistent one
(``sessionMode: "persistent"``) lives while deliveries keep arriving and ends after
``sessions.idleTimeout`` seconds without one.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid
from dataclasses import dataclass, field

from clawdbot_webhooks_hookspecs import Event

from .events import EventBus, derived_event_id

_RANDOM = random.Random(secrets.token_bytes(32))


def ephemeral_session() -> str:
    # A version-4 UUID from a generator seeded once: unique, without a system call each time.
    return f"hook:{uuid.UUID(int=_RANDOM.getrandbits(128), version=4)}"


@dataclass
class _Live:
    hook_id: str
    persistent: bool
    busy: int = 0
    timer: asyncio.TimerHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Sessions:
    def __init__(self, bus: EventBus, idle_timeout: float) -> None:
        self._bus = bus
        self._idle = idle_timeout
        self._live: dict[str, _Live] = {}

    def lock(self, session: str) -> asyncio.Lock:
        """Runs in one session take turns, in the order they asked (asyncio locks are FIFO)."""
        live = self._live.get(session)
        if live is None:
            live = self._live[session] = _Live("", False)
        return live.lock

    async def begin(self, session: str, hook_id: str, persistent: bool, cause: str) -> None:
        live = self._live.setdefault(session, _Live(hook_id, persistent))
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        started = bool(live.hook_id)
        live.hook_id, live.persistent = hook_id, persistent
        live.busy += 1
        if not started and self._bus.wants("session_started"):
            await self._bus.publish(
                Event(
                    "session_started",
                    {"hook": hook_id, "mode": "persistent" if persistent else "ephemeral"},
                    session=session,
                    causation=cause,
                    id=derived_event_id(cause, session, "session_started"),
                )
            )

    async def finish(self, session: str, cause: str) -> None:
        live = self._live.get(session)
        if live is None:
            return
        live.busy -= 1
        if live.busy > 0:
            return
        if not live.persistent:
            await self._end(session, cause, "completed")
        elif self._idle >= 0:
            loop = asyncio.get_running_loop()
            live.timer = loop.call_later(self._idle, self._idle_out, session, cause)

    def _idle_out(self, session: str, cause: str) -> None:
        if self._live.pop(session, None) is not None:
            self._bus.emit(self._ended(session, cause, "idle"))

    async def _end(self, session: str, cause: str, reason: str) -> None:
        self._live.pop(session, None)
        if self._bus.wants("session_ended"):
            await self._bus.publish(self._ended(session, cause, reason))

    def _ended(self, session: str, cause: str, reason: str) -> Event:
        return Event(
            "session_ended",
            {"reason": reason},
            session=session,
            causation=cause,
            id=derived_event_id(cause, session, "session_ended"),
        )

    def close(self) -> None:
        for live in self._live.values():
            if live.timer is not None:
                live.timer.cancel()
        self._live.clear()

"""The in-process event bus.

``publish`` awaits the durable subscribers (the outbox writes the event's deliveries) before
it returns, so whoever published knows the event is safe; plugin ``on_event`` hooks then run
in the background, each isolated, so a slow or broken plugin never holds anything up.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pluggy
from clawdbot_webhooks_hookspecs import Event, derived_event_id, derived_id, utc_timestamp

from clawdbot_webhooks.plugins.calls import HookCalls, result_of

log = logging.getLogger(__name__)

__all__ = [
    "SOURCES",
    "EventBus",
    "Subscriber",
    "derived_event_id",
    "derived_id",
    "message_received",
]

#: A durable subscriber gets each event and who published it (``SOURCES``).
Subscriber = Callable[[Event, str], Awaitable[None]]

#: Who publishes events, as the stored events name them: ``webhook`` (the run of an incoming
#: delivery: the pipeline, its action, its session), ``gateway`` (the Clawdbot gateway),
#: ``bridge`` (the event ingress), ``outbox`` (an outgoing delivery that died), ``plugin``
#: (a plugin object started with the runtime).
SOURCES = ("webhook", "gateway", "bridge", "outbox", "plugin")


class EventBus:
    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self._pm = pm
        self._durable: list[Subscriber] = []
        self._interest: list[Callable[[str], bool]] = []
        self._sends: list[Callable[[str], bool]] = []
        # The plugins are loaded once, before the bus exists: whether any watches is fixed.
        self._on_event = HookCalls(pm, "on_event") if pm is not None else None
        self._plugins_listen = bool(self._on_event)
        #: ``wanted[event_type]``: whether anyone would see an event of this type. Publishers
        #: of frequent events ask first, so nobody builds (ids, timestamps) what nobody reads.
        self.wanted = _Answers(self._interest, self._plugins_listen)
        #: ``sending[event_type]``: whether an event of this type would reach anyone (a
        #: plugin, a subscription) rather than only be stored.
        self.sending = _Answers(self._sends, self._plugins_listen)
        self._background: set[asyncio.Task[Any]] = set()

    def subscribe(
        self,
        subscriber: Subscriber,
        wants: Callable[[str], bool] = lambda event_type: True,
        sends: Callable[[str], bool] = lambda event_type: False,
    ) -> None:
        """Add a durable subscriber: ``publish`` waits for it and lets its errors through.
        ``wants`` says which event types it cares about; ``sends``, which it passes on to
        somebody (the outbox: those a subscription takes) rather than only keeping."""
        self._durable.append(subscriber)
        self._interest.append(wants)
        self._sends.append(sends)
        self.interest_changed()

    def interest_changed(self) -> None:
        """The subscribers' ``wants`` or ``sends`` may answer otherwise from now on (a reload
        changed the subscriptions): ask them again."""
        self.wanted.clear()
        self.sending.clear()

    async def publish(self, event: Event, *, source: str = "plugin") -> None:
        """Hand ``event`` to the durable subscribers, then to the plugins; ``source`` says
        who published it (one of ``SOURCES``; unsaid, a plugin)."""
        for subscriber in self._durable:
            await subscriber(event, source)
        self._notify_plugins(event)

    def publisher(self, source: str) -> Callable[[Event], Awaitable[None]]:
        """``publish`` for one source, shaped as plugins and actions are given it."""
        return functools.partial(self.publish, source=source)

    def emit(self, event: Event, *, source: str = "plugin") -> None:
        """Publish from code that cannot await (a gateway's socket reader, a timer)."""
        self._track(self._publish_logged(event, source))

    def emitter(self, source: str) -> Callable[[Event], None]:
        """``emit`` for one source (a gateway is given it)."""
        return functools.partial(self.emit, source=source)

    async def _publish_logged(self, event: Event, source: str) -> None:
        try:
            await self.publish(event, source=source)
        except Exception:
            log.exception("event %s (%s) could not be published", event.id, event.type)

    def _notify_plugins(self, event: Event) -> None:
        calls = self._on_event
        if not self._plugins_listen or calls is None:
            return

        def each() -> None:
            # Every plugin is called, whatever the ones before it did.
            for plugin, caller in calls.each:
                try:
                    outcome = result_of(caller, {"event": event})
                except Exception:
                    log.exception("plugin %r failed in on_event for %s", plugin, event.id)
                    continue
                if inspect.isawaitable(outcome):
                    self._track(self._guard(plugin, event, outcome))

        try:
            calls.around({"event": event}, each)
        except Exception as exc:
            plugin = calls.wrapper_name(exc)
            log.exception("plugin %r failed in on_event for %s", plugin, event.id)

    async def _guard(self, plugin: str, event: Event, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("plugin %r failed in on_event for %s", plugin, event.id)

    def _track(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for background notifications (at shutdown, and in tests)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)


#: Event types whose answers are kept at most: plugins may publish types of their own.
_REMEMBERED = 64


class _Answers(dict[str, bool]):
    """Whether any of ``checks`` says yes to an event type (or ``always``), worked out the
    first time a type is asked for and kept: asked several times a webhook, an answer known
    already costs a look-up and no Python call. Cleared when the checks may answer
    otherwise (``EventBus.interest_changed``)."""

    def __init__(self, checks: list[Callable[[str], bool]], always: bool) -> None:
        super().__init__()
        self._checks = checks
        self._always = always

    def __missing__(self, event_type: str) -> bool:
        answer = self._always or _any_says(self._checks, event_type)
        if len(self) >= _REMEMBERED:
            self.clear()
        self[event_type] = answer
        return answer


def _any_says(checks: list[Callable[[str], bool]], event_type: str) -> bool:
    """Whether one of ``checks`` says yes (a loop costs less than ``any`` over a
    generator)."""
    for check in checks:  # noqa: SIM110
        if check(event_type):
            return True
    return False


def message_received(
    hook_id: str, text: str, session: str, cause: str, at: float | None = None
) -> Event:
    """The ``message_received`` event of a webhook's text sent to the chat (``at``: when, by
    default now): published by the pipeline, or made from the delivery's row by the views."""
    when = utc_timestamp(at)
    return Event(
        "message_received",
        {"from": f"webhook:{hook_id}", "text": text, "timestamp": when},
        session=session,
        causation=cause,
        id=derived_event_id(cause, "message_received"),
        timestamp=when,
    )

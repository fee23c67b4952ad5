"""From a stored delivery to its action's outcome.

The server stores a delivery (leased to this process) and hands it here. ``Pipeline`` runs it:
``on_incoming`` plugins, the session, the templates, the action; then records the outcome:
done, retry later (backoff), or dead letter. A retry schedule lives in the store, so a delivery
that was acknowledged but not finished runs again after a crash or restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pluggy
from clawdbot_webhooks_hookspecs import (
    DROP,
    ActionContext,
    ActionError,
    Delivery,
    Gateway,
    GatewayError,
)

from clawdbot_webhooks.config import HandlerSpec, Settings
from clawdbot_webhooks.content_policy import Screens
from clawdbot_webhooks.dead_letters import attempts_in_all, dead_letter, error_event
from clawdbot_webhooks.events import EventBus, message_received
from clawdbot_webhooks.plugins.calls import HookCalls, call_on_incoming
from clawdbot_webhooks.session_keys import SessionKeyError, render_session_key
from clawdbot_webhooks.sessions import Sessions
from clawdbot_webhooks.slots import Slots
from clawdbot_webhooks.store import Attempt, IncomingRecord, Store
from clawdbot_webhooks.templates import context_for, is_trusted, trusted_context
from clawdbot_webhooks.web.outage import describe, poller_outage
from clawdbot_webhooks.web.requests import Rejected, parse_content

log = logging.getLogger(__name__)

#: How long a claimed delivery stays ours before another process may take it over (the
#: default of ``storage.leaseSeconds``; the runtime's heartbeat renews it while work runs).
LEASE_SECONDS = 30.0
#: How often stored work (retries, work of a dead process) is looked for at the latest.
POLL_SECONDS = 1.0


def _untimed(hook: str, outcome: str, seconds: float) -> None:
    """Where action timings go when nobody measures them."""


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        pm: pluggy.PluginManager,
        store: Store,
        gateway: Gateway,
        bus: EventBus,
        sessions: Sessions,
        *,
        on_action: Callable[[str, str, float], None] = _untimed,
        on_policy_match: Callable[[str, str, str], None] | None = None,
    ) -> None:
        """``on_action(hook, outcome, seconds)`` times each action (``Metrics.action``);
        ``on_policy_match(hook, pattern, mode)`` counts content-policy matches
        (``Metrics.content_policy_match``)."""
        self.settings = settings
        self._pm = pm
        self._on_incoming = HookCalls(pm, "on_incoming")
        self._store = store
        self._gateway = gateway
        self._bus = bus
        #: What every action is given to publish with (made once, not per delivery).
        self._publish = bus.publisher("webhook")
        self._sessions = sessions
        #: The HTTP client actions share; it needs a running loop, so ``start`` brings it.
        self._http: Any = None
        self._slots = Slots(settings.incoming.concurrency)
        # ``maxConcurrent`` per handler: its extra deliveries stay stored and wait their turn.
        self._handler_slots = {
            spec.handler.id: Slots(spec.max_concurrent)
            for spec in settings.handlers
            if spec.max_concurrent
        }
        self._in_flight: Counter[str] = Counter()
        #: The deliveries this process has claimed and not finished, by id: their tasks.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self.inbox_outage = poller_outage("inbox")
        #: The loop it runs on, kept from ``start`` rather than asked for on every delivery.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Deliveries held in memory (running or waiting for a slot) at most; beyond that the
        #: store is the queue, so a long burst costs disk, not memory.
        self._max_held = settings.incoming.concurrency * 4
        #: Set while stored deliveries wait for the poller: new ones queue behind them.
        self._backlog = False
        self._reserved = 0
        #: Deliveries being stored behind the backlog (unleased) right now, and how many ever
        #: were: a claim can only say the backlog is gone if none was stored while it ran.
        self._deferring = 0
        self._deferred = 0
        self._closing = False
        self.lease = settings.storage.lease_seconds
        self._on_action = on_action
        self._screens = Screens(on_policy_match)

    # -- lifecycle

    def start(self, http: Any) -> None:
        self._http = http
        self._loop = asyncio.get_running_loop()
        self._screens.start(self._loop)
        self._poller = self._loop.create_task(self._poll(), name="inbox-poller")

    async def stop(self, timeout: float) -> int:
        """Stop taking work, let running actions finish within ``timeout``, leave the rest
        stored for the next start (their leases are released then); returns how many."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks.values()), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%d actions did not finish in time; they run again at next start", len(pending)
                )
                await asyncio.wait(pending, timeout=1)
            return len(pending)
        return 0

    def update(self, settings: Settings) -> None:
        """Take a reloaded config: deliveries that start from now on use its handlers and
        limits; the running ones finish with the handler and slots they started with."""
        if settings.incoming.concurrency != self.settings.incoming.concurrency:
            self._slots = Slots(settings.incoming.concurrency)
            self._max_held = settings.incoming.concurrency * 4
        old = {s.handler.id: s.max_concurrent for s in self.settings.handlers}
        self._handler_slots = {
            spec.handler.id: (
                self._handler_slots[spec.handler.id]
                if old.get(spec.handler.id) == spec.max_concurrent
                and spec.handler.id in self._handler_slots
                else Slots(spec.max_concurrent)
            )
            for spec in settings.handlers
            if spec.max_concurrent
        }
        self.settings = settings

    # -- intake

    async def accept(
        self,
        record: IncomingRecord,
        payload: Any,
        *,
        sync: bool,
        dedup_since: float,
        spec: HandlerSpec | None = None,
    ) -> tuple[bool, asyncio.Future[Any] | None]:
        """Store a new delivery durably, then run it now or leave it to the poller.

        It runs at once (stored leased to this process) while fewer than ``_max_held``
        deliveries are held in memory; past that it is stored unleased and waits behind the
        backlog, in arrival order, so a long burst costs disk, not memory. A ``sync`` one
        always runs now: its caller waits, and open connections bound how many do.
        Returns whether it was stored (False: a duplicate) and, for ``sync``, its result.
        ``spec``: the handler it was accepted for, which it runs with even if a config reload
        changes or removes that handler meanwhile.
        """
        run_now = not self._closing and (
            sync or (not self._backlog and len(self._tasks) + self._reserved < self._max_held)
        )
        deferred = not run_now and not self._closing
        if deferred:
            self._backlog = True
            self._deferred += 1
        self._reserved += run_now  # held for it while the insert is under way
        self._deferring += deferred
        try:
            stored = await self._store.add_incoming(
                record, self.lease if run_now else 0.0, dedup_since=dedup_since
            )
        finally:
            self._reserved -= run_now
            self._deferring -= deferred
        if not stored or not run_now:
            return stored, None
        return True, self.submit(record, payload, wait=sync, spec=spec)

    def submit(
        self,
        record: IncomingRecord,
        payload: Any = None,
        *,
        wait: bool = False,
        spec: HandlerSpec | None = None,
    ) -> asyncio.Future[Any] | None:
        """Run a freshly stored (already leased) delivery; with ``wait``, a future of its
        result. While closing nothing starts: the stored delivery runs at the next start."""
        if self._closing:
            return None
        waiter: asyncio.Future[Any] | None = None
        if wait:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[record.id] = waiter
        self._spawn(record, payload, spec)
        return waiter

    @property
    def backlogged(self) -> bool:
        """Whether new deliveries are waiting in the store for a place in memory."""
        return self._backlog

    def held_ids(self) -> list[str]:
        """Deliveries this process has claimed and not finished (the heartbeat renews them)."""
        return list(self._tasks)

    def in_flight(self, hook_id: str) -> int:
        """Deliveries of this handler running or waiting for a slot in this process."""
        return self._in_flight[hook_id]

    def _spawn(
        self, record: IncomingRecord, payload: Any = None, spec: HandlerSpec | None = None
    ) -> None:
        self._in_flight[record.hook_id] += 1
        assert self._loop is not None  # set by start(); nothing is accepted before it
        self._tasks[record.id] = self._loop.create_task(self._run(record, payload, spec))

    async def _poll(self) -> None:
        """Pick up stored work that is due: retries, and work left by a stopped process."""
        while not self._closing:
            raced = False
            try:
                free = max(0, self._max_held - len(self._tasks))
                if free:
                    # A delivery stored behind the backlog while the claim ran may be missing
                    # from it; the one after it would then overtake it if the backlog ended.
                    quiet, deferred = self._deferring == 0, self._deferred
                    claimed = await self._store.claim_incoming(free, self.lease)
                    for record in claimed:
                        if record.id not in self._tasks:
                            self._spawn(record)
                    if len(claimed) < free:
                        raced = not quiet or deferred != self._deferred
                        if not raced:
                            self._backlog = False  # the store holds nothing more that is due
                # With a backlog, the next claim comes when a place frees up (``wake``).
                due = None if self._backlog else await self._store.next_incoming_due()
                self.inbox_outage.succeeded()
            except Exception as exc:
                self.inbox_outage.failed(describe(exc))
                log.debug("could not read the inbox", exc_info=True)
                due = None
            if raced:
                wait = 0.0  # claim again soon, until no delivery races the claim
            elif due is None:
                wait = POLL_SECONDS
            else:
                wait = min(POLL_SECONDS, max(0.0, due - time.time()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))

    def wake(self) -> None:
        self._wake.set()

    # -- running one delivery

    async def _run(
        self, record: IncomingRecord, payload: Any, spec: HandlerSpec | None = None
    ) -> None:
        if spec is None:
            spec = self.settings.routes.get(record.hook_id)
        # The slots it takes from are the ones it gives back to, whatever a reload puts in
        # their place meanwhile.
        slots = self._slots
        try:
            if spec is None:
                await self._dead(
                    record, f"handler {record.hook_id!r} is no longer configured", None
                )
                return
            if spec.persistent and not record.session:
                await self._unkeyed(record, spec, payload)
                return
            if spec.persistent or spec.max_concurrent:
                # The session's turn, then the handler's own cap: waiting for either must not
                # hold a shared slot.
                turn = self._sessions.turn(record.session, spec.persistent)
                handler_slot = self._handler_slots.get(spec.handler.id) or contextlib.nullcontext()
                async with turn, handler_slot, slots:
                    await self._attempt(record, spec, payload)
            else:  # the common case: an ephemeral session, no cap of its own
                if not slots.take():
                    await slots.wait()
                try:
                    await self._attempt(record, spec, payload)
                finally:
                    slots.give()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed: the lease expires and it runs again
            log.exception("delivery %s could not be recorded: %r", record.id, exc)
            self._settle(record.id, exc)
        finally:
            # The task leaves ``_tasks`` itself, with no done-callback per task. (One cancelled
            # before its first step stays; that happens only while stopping.)
            self._tasks.pop(record.id, None)
            self._in_flight[record.hook_id] -= 1
            if self._backlog:
                self.wake()  # a place is free: the poller takes the next stored one

    async def _unkeyed(self, record: IncomingRecord, spec: HandlerSpec, payload: Any) -> None:
        """A persistent delivery stored without a session: its key had no value. Rendered
        again (the key may have been fixed before a replay), else a dead letter saying why."""
        try:
            if payload is None:
                payload = self._payload(record, spec)
            record.session = render_session_key(spec, record.as_delivery(payload))
        except (SessionKeyError, ActionError) as exc:
            attempt = record.attempts + 1
            failure = ActionError(str(exc), retry=False)
            await self._failed(record, spec, attempt, failure, time.monotonic())
            return
        # Stored before it runs: the row, the admin API and a retry show the session it ran in.
        await self._store.set_incoming_session(record.id, record.session)
        handler_slot = self._handler_slots.get(spec.handler.id) or contextlib.nullcontext()
        async with self._sessions.turn(record.session, True), handler_slot, self._slots:
            await self._attempt(record, spec, payload)

    async def _attempt(self, record: IncomingRecord, spec: HandlerSpec, payload: Any) -> None:
        handler = spec.handler
        attempt = record.attempts + 1
        if payload is None:
            try:
                payload = self._payload(record, spec)
            except ActionError as exc:
                await self._failed(record, spec, attempt, exc, time.monotonic())
                return
        delivery = record.as_delivery(payload)
        event = self._sessions.begin(record.session, handler.id, spec.persistent, record.id)
        if event is not None:
            await self._bus.publish(event, source="webhook")
        started = time.monotonic()
        kept: list[str] = []  # the message to keep in the row (``_said``)
        try:
            outcome = await self._act(delivery, spec, kept)
        except Exception as exc:
            await self._failed(record, spec, attempt, exc, started, *kept)
        else:
            self._succeeded(record, spec, attempt, outcome, started, *kept)
        event = self._sessions.finish(record.session, record.id, spec.persistent)
        if event is not None:
            await self._bus.publish(event, source="webhook")

    def _payload(self, record: IncomingRecord, spec: HandlerSpec) -> Any:
        """A stored delivery's payload as it was presented when it arrived (a retry, a
        replay, work of a stopped process): parsed by the same rules, the same depth limit
        and the verifier's ``present``. A body the config in force no longer parses (its
        depth limit lowered since) is a dead letter saying why."""
        try:
            parsed = parse_content(
                record.body,
                record.content_type,
                max_depth=self.settings.incoming.max_json_depth,
            )
        except Rejected as exc:
            message = f"the stored body does not parse: {exc.message}"
            raise ActionError(message, retry=False) from exc
        return spec.presented(parsed)

    def _succeeded(
        self,
        record: IncomingRecord,
        spec: HandlerSpec,
        attempt: int,
        outcome: Any,
        started: float,
        message: str | None = None,
    ) -> None:
        status = "dropped" if outcome is DROP else "done"
        self._on_action(record.hook_id, status, time.monotonic() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "delivery %s to %s: %s after %d attempts",
                record.id,
                record.hook_id,
                status,
                attempt,
                extra={"delivery": record.id, "hook": record.hook_id},
            )
        # Recorded without waiting for the commit (the next batch carries it): nothing here
        # depends on it, and should it fail, the lease runs out and the delivery runs again.
        result = None if outcome is DROP else outcome
        self._store.record_outcome(
            record.id, status, attempts=attempt, result=result, message=message
        )
        if self._waiters:  # a sync delivery's sender waits for it
            self._settle(record.id, {"dropped": True} if outcome is DROP else outcome)

    async def _failed(
        self,
        record: IncomingRecord,
        spec: HandlerSpec,
        attempt: int,
        exc: Exception,
        started: float,
        message: str | None = None,
    ) -> None:
        """Retry later (the schedule is stored before this returns), or dead-letter."""
        retry = getattr(exc, "retry", True)
        reason = _describe(exc)
        gives_up = not retry or spec.retry.gives_up_after(attempt)
        self._on_action(record.hook_id, "dead" if gives_up else "retry", time.monotonic() - started)
        status, response = _answer(exc)
        latency = 1000 * (time.monotonic() - started)
        failed = Attempt(record.id, attempt, time.time(), status, latency, response, reason)
        if gives_up:
            await self._dead(record, reason, spec, attempt, failed, message)
            return
        delay = spec.retry.delay(attempt)
        log.warning(
            "delivery %s attempt %d failed (%s); retrying in %.2fs",
            record.id,
            attempt,
            reason,
            delay,
            extra={"delivery": record.id, "hook": record.hook_id},
        )
        await self._store.finish_incoming(
            record.id,
            "pending",
            attempts=attempt,
            error=reason,
            retry_at=time.time() + delay,
            failed=failed,
            message=message,
        )
        self.wake()

    async def _act(self, delivery: Delivery, spec: HandlerSpec, kept: list[str]) -> Any:
        handler = spec.handler
        if self._on_incoming.active:
            changed = call_on_incoming(self._on_incoming, delivery, handler)
            if changed is DROP:
                return DROP
            assert isinstance(changed, Delivery)
            delivery = changed
        options = self._render(spec, delivery)
        text = options.get("template")
        if isinstance(text, str):
            await self._said(delivery, spec, text, kept)
        ctx = ActionContext(
            delivery=delivery,
            handler=handler,
            options=options,
            session=delivery.session,
            idempotency_key=delivery.id,
            gateway=self._gateway,
            http=self._http,
            publish=self._publish,
            logger=spec.logger,
            sender=spec.sender,
            screen=None if spec.screen is None else self._screens.of(spec.screen),
        )
        return await spec.action.run(ctx)

    async def _said(
        self, delivery: Delivery, spec: HandlerSpec, text: str, kept: list[str]
    ) -> None:
        """``message_received`` for the text the action sends (its ``template``). In an
        ephemeral session, when nobody takes the event, the text goes into ``kept`` instead,
        stored with the outcome: the views make the event from the row (``chain.py``)."""
        if not spec.persistent and not self._bus.sending["message_received"]:
            kept.append(text)
        elif self._bus.wanted["message_received"]:
            event = message_received(spec.handler.id, text, delivery.session, delivery.id)
            await self._bus.publish(event, source="webhook")

    def _render(self, spec: HandlerSpec, delivery: Delivery) -> dict[str, Any]:
        """The action's options with every template rendered for this delivery."""
        options: dict[str, Any] = dict(spec.handler.options)
        if not spec.templates:
            return options
        context = context_for(delivery, spec.handler, spec.reads)
        for path, template in spec.templates.items():
            try:
                # The operator's instructions are trusted: no payload text may reach them.
                text = template.render(
                    trusted_context(delivery, spec.handler, spec.persistent)
                    if is_trusted(path)
                    else context
                )
            except Exception as exc:  # strict undefined, a filter's error, the sandbox
                raise ActionError(f"template {'.'.join(path)}: {exc}", retry=False) from exc
            # Copy only the mappings along the path: the handler's options stay untouched.
            target: dict[str, Any] = options
            for key in path[:-1]:
                target[key] = dict(target[key])
                target = target[key]
            target[path[-1]] = text
        return options

    async def _dead(
        self,
        record: IncomingRecord,
        reason: str,
        spec: HandlerSpec | None,
        attempts: int | None = None,
        failed: Attempt | None = None,
        message: str | None = None,
    ) -> None:
        n = attempts if attempts is not None else record.attempts
        total = await attempts_in_all(self._store, "incoming", record.id, n, failed is not None)
        log.error(
            "delivery %s to %s dead-lettered after %d attempts: %s",
            record.id,
            record.hook_id,
            total,
            reason,
            extra={"delivery": record.id, "hook": record.hook_id},
        )
        data = {
            "kind": "incoming",
            "hook": record.hook_id,
            "delivery": record.id,
            "attempts": total,
            "error": reason,
        }

        async def mark_dead() -> None:
            await self._store.finish_incoming(
                record.id, "dead", attempts=n, error=reason, failed=failed, message=message
            )

        await dead_letter(
            self._bus,
            error_event(record.id, record.session, total, data),
            mark_dead,
            source="webhook",
        )
        self._settle(record.id, ActionError(reason, retry=False))

    def _settle(self, delivery_id: str, outcome: Any) -> None:
        waiter = self._waiters.pop(delivery_id, None)
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


def _answer(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and response text an action's failure carries (a forward's answer)."""
    status, text = getattr(exc, "status", None), getattr(exc, "response", None)
    ok = isinstance(status, int) and 100 <= status <= 599
    return (status if ok else None), (text[:2048] if isinstance(text, str) else None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ActionError | GatewayError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

"""Outgoing webhooks: the durable outbox and the dispatcher that empties it.

``Outbox.record`` is a durable subscriber of the event bus: ``bus.publish(event)`` returns only
after one outbox row per matching subscription is committed. A row's id is derived from the
event id and the subscription id, so publishing the same event again (a re-run after a crash)
adds nothing.

The dispatcher sends due rows with the subscription's transport and records every attempt.
Rows of one (subscription, session) form a *lane* that is worked strictly in order: delivery
N+1 starts only after N is delivered or dead, also across retries and restarts (the store only
claims a row when no earlier row of its lane is waiting). Lanes run in parallel, limited per
subscription by ``concurrency`` and paused per endpoint by a circuit breaker; an endpoint that
hangs only ever holds its own slots, so it cannot delay anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from clawdbot_webhooks_hookspecs import EVENT_TYPES, Event, OutgoingRequest, OutgoingResponse

from clawdbot_webhooks import __version__, jsontext
from clawdbot_webhooks.config import Subscription
from clawdbot_webhooks.dead_letters import attempts_in_all, dead_letter, error_event
from clawdbot_webhooks.events import EventBus, derived_id
from clawdbot_webhooks.outgoing.breaker import Breakers
from clawdbot_webhooks.outgoing.verdicts import RETRY_AFTER_CAP, Verdict, classify
from clawdbot_webhooks.signing import StandardSigner
from clawdbot_webhooks.store import Attempt, EventRecord, OutgoingOutcome, OutgoingRecord, Store
from clawdbot_webhooks.web.outage import describe, poller_outage

log = logging.getLogger(__name__)

#: How long a claimed delivery stays ours before another process may take it over.
LEASE_SECONDS = 30.0  # the default of storage.leaseSeconds; the heartbeat renews it
#: How often the outbox is looked at for due retries and work left by a stopped process.
POLL_SECONDS = 1.0
#: Rows one claim takes at most.
CLAIM_BATCH = 500
#: Rows of one subscription held in memory at most; beyond it the poller leaves them stored,
#: so one slow endpoint's backlog cannot crowd out the others.
HELD_PER_SUBSCRIPTION = 2000
#: How much of a response body an attempt keeps.
KEEP_RESPONSE = 4096
USER_AGENT = f"clawdbot-webhooks/{__version__}"


def outbox_id(event_id: str, subscription_id: str) -> str:
    """The deterministic row id of one event's delivery to one subscription."""
    return derived_id("out", event_id, subscription_id)


def payload_bytes(event: Event) -> bytes:
    """Compact JSON, non-ASCII as UTF-8: orjson's own form, the standard library's for what
    orjson refuses."""
    return jsontext.encode(event.to_payload())


def render_template(sub: Subscription, payload: bytes) -> bytes:
    """A subscription's custom body: its template rendered with the keys of the event's
    payload (and the whole payload as ``event``)."""
    assert sub.template is not None
    event = json.loads(payload)
    text = sub.template.render({**event, "event": event})
    return str(text).encode("utf-8")


def _looks_like_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _uncounted(subscription: str, outcome: str, seconds: float) -> None:
    """Where attempts go when nobody counts them (``dlq replay``)."""


class _Finisher:
    """Collects attempt outcomes and writes whatever has gathered in one store call, so a
    busy dispatcher costs one transaction per batch rather than per delivery."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._batch: list[OutgoingOutcome] = []
        self._task: asyncio.Task[None] | None = None
        #: Deliveries waiting for a retry here that another process took over meanwhile
        #: (their lease ran out): they are that process's to send now.
        self.taken_over: set[str] = set()

    def put(self, outcome: OutgoingOutcome) -> None:
        self._batch.append(outcome)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                taken = await self._store.finish_outgoing_many(batch)
                waiting = {o.delivery_id for o in batch if o.status == "pending"}
                self.taken_over.update(waiting.intersection(taken))
            except Exception:
                # The rows stay leased and pending: they are attempted again once the lease
                # expires (or at the next start), so nothing is lost, at worst repeated.
                log.exception("could not record %d outgoing attempts", len(batch))

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


class Outbox:
    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        store: Store,
        bus: EventBus,
        transports: Any,
        *,
        lease: float = LEASE_SECONDS,
        breakers: Breakers | None = None,
        on_attempt: Callable[[str, str, float], None] = _uncounted,
    ) -> None:
        """``lease``: ``storage.leaseSeconds``; ``breakers``: the circuit breakers, shared
        with whoever reports them; ``on_attempt(subscription, outcome, seconds)`` counts each
        attempt (``Metrics.outgoing_attempt``)."""
        self._subs = {s.id: s for s in subscriptions}
        # Subscriptions by event type, so finding an event's targets does not grow with the
        # number of subscriptions that do not want it.
        self._by_type = {kind: [s for s in subscriptions if s.wants(kind)] for kind in EVENT_TYPES}
        self._store = store
        self._bus = bus
        self._transports = transports
        self._signers = {s.id: StandardSigner(s.secret) for s in subscriptions if s.secret}
        self._slots = {s.id: asyncio.Semaphore(s.concurrency) for s in subscriptions}
        self.breakers = Breakers(subscriptions) if breakers is None else breakers
        #: Subscriptions a reload removed, for the rows recorded before it.
        self._retired: dict[str, Subscription] = {}
        self._lanes: dict[tuple[str, str], deque[OutgoingRecord]] = {}
        self._held: dict[str, int] = {}
        self._known: set[str] = set()
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[Any]] = set()
        self._finisher = _Finisher(store)
        self._poller: asyncio.Task[None] | None = None
        self.outbox_outage = poller_outage("outbox")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._closing = False
        self.lease = lease
        self._on_attempt = on_attempt

    def update(self, subscriptions: Sequence[Subscription]) -> None:
        """Take a reloaded config's subscriptions. Rows already being worked keep the
        subscription they started with; a subscription's concurrency slots are kept while its
        limit is unchanged (and a removed one's stay for the rows still holding them)."""
        slots = dict(self._slots)
        for sub in subscriptions:
            old = self._subs.get(sub.id)
            if old is None or old.concurrency != sub.concurrency:
                slots[sub.id] = asyncio.Semaphore(sub.concurrency)
        self._signers = {s.id: StandardSigner(s.secret) for s in subscriptions if s.secret}
        self._slots = slots
        self._by_type = {kind: [s for s in subscriptions if s.wants(kind)] for kind in EVENT_TYPES}
        new = {s.id: s for s in subscriptions}
        # Rows recorded for a removed subscription before the reload are still delivered.
        self._retired.update({k: v for k, v in self._subs.items() if k not in new})
        for key in new:
            self._retired.pop(key, None)
        self._subs = new
        self.breakers.update(subscriptions)
        self.wake()  # rows of a subscription added back may be waiting

    # -- the durable subscriber

    def targets(self, event: Event) -> list[Subscription]:
        """The subscriptions an event goes to.

        An ``error`` event about a failed outgoing delivery never goes back to the
        subscription that failed, and one about a failed ``error`` delivery goes nowhere:
        two broken endpoints cannot feed each other an endless chain of errors.
        """
        subs = self._wanting(event.type)
        if event.type == "error" and event.data.get("kind") == "outgoing":
            if event.data.get("eventType") == "error":
                return []
            failed = event.data.get("subscription")
            subs = [s for s in subs if s.id != failed]
        return subs

    def sends(self, event_type: str) -> bool:
        """Whether a subscription takes events of this type."""
        return bool(self._wanting(event_type))

    def _wanting(self, event_type: str) -> list[Subscription]:
        subs = self._by_type.get(event_type)
        if subs is None:  # a type outside the five, published by a plugin
            subs = [s for s in self._subs.values() if s.wants(event_type)]
        return subs

    async def record(self, event: Event, source: str) -> None:
        """Store the event (published by ``source``) and one row per subscription that
        takes it: together, in one transaction; an event nobody takes goes with the store's
        next batch, unwaited."""
        now = time.time()
        payload = payload_bytes(event)
        stored = EventRecord.of(event, source, payload, now)
        subs = self.targets(event)
        if not subs:
            self._store.record_event(stored)
            return
        # Each row holds the event's payload: a subscription's template is rendered from it
        # for each attempt, so a template fixed since applies to a replayed dead letter.
        records = [
            OutgoingRecord(
                id=outbox_id(event.id, sub.id),
                event_id=event.id,
                subscription_id=sub.id,
                event_type=event.type,
                session=event.session,
                payload=payload,
                created_at=now,
                causation=event.causation,
            )
            for sub in subs
        ]
        lease = self.lease if self._running else 0
        added = set(await self._store.add_outgoing(records, lease, stored))
        if self._running:
            for rec in records:
                if rec.id in added and rec.status == "pending":
                    self._enqueue(rec)

    # -- lifecycle

    def start(self) -> None:
        self._running = True
        # Kept for the lanes, which would otherwise ask asyncio for it on every delivery.
        self._loop = asyncio.get_running_loop()
        self._poller = self._loop.create_task(self._poll(), name="outbox-poller")

    async def stop(self, timeout: float) -> int:
        """Start nothing new; give attempts in flight up to ``timeout`` to finish; record
        what finished and hand the rest back to the store for the next start (returns how
        many)."""
        self._running = False
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in self._lane_tasks - self._sending:
            task.cancel()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)
        for task in self._lane_tasks:
            task.cancel()
        if self._lane_tasks:
            await asyncio.wait(set(self._lane_tasks), timeout=1)
        await self._finisher.drain()
        left = len(self._known)
        if self._known:
            with contextlib.suppress(Exception):
                await self._store.release_outgoing(sorted(self._known))
        self._known.clear()
        self._lanes.clear()
        self._held.clear()
        return left

    def wake(self) -> None:
        self._wake.set()

    def held_ids(self) -> list[str]:
        """Rows this process has claimed and not finished (the heartbeat renews them)."""
        return list(self._known)

    # -- dispatching

    def _enqueue(self, rec: OutgoingRecord) -> None:
        self._known.add(rec.id)
        self._held[rec.subscription_id] = self._held.get(rec.subscription_id, 0) + 1
        key = (rec.subscription_id, rec.session or f"\x00{rec.id}")
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(rec)
            return
        lane = self._lanes[key] = deque([rec])
        assert self._loop is not None  # set by start(); lanes start only once running
        task = self._loop.create_task(self._run_lane(key, lane))
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    def _forget(self, rec: OutgoingRecord) -> None:
        self._known.discard(rec.id)
        self._held[rec.subscription_id] = self._held.get(rec.subscription_id, 1) - 1

    async def _run_lane(self, key: tuple[str, str], lane: deque[OutgoingRecord]) -> None:
        try:
            while lane and not self._closing:
                rec = lane[0]
                try:
                    finished = await self._deliver(rec)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The store failed. Give up the whole lane: its rows stay leased and
                    # pending, and are claimed again, in order, once the leases expire.
                    log.exception("outgoing lane %s stopped; it resumes later", key)
                    for left in lane:
                        self._forget(left)
                    lane.clear()
                    break
                if not finished:  # stopping with its retry stored: ``stop`` counts it as left
                    break
                lane.popleft()
                self._forget(rec)
        finally:
            if not lane and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _deliver(self, rec: OutgoingRecord) -> bool:
        """Attempt one row until it is delivered or dead, waiting out its retries here;
        whether it got there (not when stopping left it pending)."""
        sub = self._subs.get(rec.subscription_id) or self._retired.get(rec.subscription_id)
        if sub is None:
            await self._dead(rec, "subscription is no longer configured", None)
            return True
        body = await self._body(rec, sub)
        if body is None:
            return True
        breaker = self.breakers.of(sub)
        while not self._closing:
            wait = rec.next_attempt_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if rec.id in self._finisher.taken_over:  # its retry is another process's now
                self._finisher.taken_over.discard(rec.id)
                return True
            probe = False
            verdict: Verdict | None = None
            try:
                async with self._slots[sub.id]:
                    # Admitted once it holds a place to send from, right before it sends: the
                    # breaker cannot open between the two.
                    probe = await breaker.admit()
                    if not self._closing:
                        verdict = await self._attempt(rec, sub, body)
            finally:
                if verdict is not None:
                    breaker.record(not verdict.unhealthy, probe)
                elif probe:  # stopped or cancelled before an answer: someone else probes
                    breaker.abandon_probe()
            if verdict is None:
                return False
            if verdict.outcome != "retry":
                return True
        return False

    async def _body(self, rec: OutgoingRecord, sub: Subscription) -> bytes | None:
        """What the row's attempts send: its payload, or its subscription's template rendered
        from it; None when the template fails, the row then a dead letter. Before any
        attempt: a body never sent says nothing of the endpoint (its breaker)."""
        if sub.template is None:
            return rec.payload
        try:
            return render_template(sub, rec.payload)
        except Exception as exc:  # no attempt would do better until it is fixed
            await self._dead(rec, f"template failed: {exc}", None)
            return None

    async def _attempt(
        self, rec: OutgoingRecord, sub: Subscription, body: bytes, *, hold: bool = True
    ) -> Verdict:
        """One attempt with ``body`` (``_body``): send, classify, record (retry schedule,
        dead letter, or done)."""
        request = self._request(rec, sub, body)
        at = time.time()
        started = time.monotonic()
        task = asyncio.current_task(self._loop)
        if task is not None:
            self._sending.add(task)
        try:
            response = await self._transports[sub.transport].send(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plugin transport that raised instead of reporting
            response = OutgoingResponse(None, error=f"transport {sub.transport!r}: {exc!r}")
        finally:
            if task is not None:
                self._sending.discard(task)
        latency = (time.monotonic() - started) * 1000
        rec.attempts += 1
        verdict = classify(response, sub.retry_on_4xx)
        retrying = verdict.outcome == "retry" and not sub.retry.gives_up_after(rec.attempts)
        label = "delivered" if verdict.outcome == "done" else "retry" if retrying else "dead"
        self._on_attempt(sub.id, label, latency / 1000)
        attempt = Attempt(
            rec.id,
            rec.attempts,
            at,
            response.status,
            round(latency, 2),
            bytes(response.body[:KEEP_RESPONSE]).decode("utf-8", "replace") or None,
            response.error if response.status is None else verdict.reason,
        )
        if verdict.outcome == "done":
            log.debug(
                "delivery %s to %s delivered (HTTP %s, %.1f ms)",
                rec.id,
                sub.id,
                response.status,
                latency,
                extra={"delivery": rec.id, "subscription": sub.id},
            )
            self._finisher.put(OutgoingOutcome(rec.id, "done", rec.attempts, attempt=attempt))
            return verdict
        if retrying:
            delay = sub.retry.delay(rec.attempts)
            if verdict.retry_after is not None:
                # The endpoint said when: that wins over the policy, within reason.
                delay = min(verdict.retry_after, RETRY_AFTER_CAP)
            rec.next_attempt_at = time.time() + delay
            log.info(
                "delivery %s to %s attempt %d failed (%s); retrying in %.2fs",
                rec.id,
                sub.id,
                rec.attempts,
                verdict.reason,
                delay,
                extra={"delivery": rec.id, "subscription": sub.id},
            )
            self._finisher.put(
                OutgoingOutcome(
                    rec.id,
                    "pending",
                    rec.attempts,
                    error=verdict.reason,
                    retry_at=rec.next_attempt_at,
                    # Waiting for the retry here, we keep the row so no one else takes it.
                    hold_until=rec.next_attempt_at + self.lease if hold else 0.0,
                    attempt=attempt,
                )
            )
            return verdict
        reason = verdict.reason or "failed"
        if verdict.outcome == "retry":
            reason = f"{reason}; gave up after {rec.attempts} attempts"
        await self._dead(rec, reason, response.status, attempt)
        return Verdict("dead", reason, verdict.unhealthy)

    def _request(self, rec: OutgoingRecord, sub: Subscription, body: bytes) -> OutgoingRequest:
        """The attempt's request: ``body`` the row's payload, or its subscription's template
        rendered from it."""
        json_body = sub.template is None or _looks_like_json(body)
        headers = {
            "content-type": "application/json" if json_body else "text/plain; charset=utf-8",
            "user-agent": USER_AGENT,
        }
        headers.update({k.lower(): v for k, v in sub.headers.items()})
        signer = self._signers.get(sub.id)
        if signer is not None:
            headers.update(signer.headers(rec.event_id, int(time.time()), body))
        return OutgoingRequest(
            url=sub.url,
            method=sub.method,
            headers=headers,
            body=body,
            timeout=sub.timeout,
            delivery_id=rec.id,
            subscription_id=sub.id,
        )

    async def _dead(
        self,
        rec: OutgoingRecord,
        reason: str,
        status: int | None,
        attempt: Attempt | None = None,
    ) -> None:
        await self._finisher.drain()  # the earlier attempts in the history first
        total = await attempts_in_all(
            self._store, "outgoing", rec.id, rec.attempts, attempt is not None
        )
        log.error(
            "delivery %s of event %s to %s dead-lettered after %d attempts: %s",
            rec.id,
            rec.event_id,
            rec.subscription_id,
            total,
            reason,
            extra={"delivery": rec.id, "subscription": rec.subscription_id},
        )
        data = {
            "kind": "outgoing",
            "subscription": rec.subscription_id,
            "delivery": rec.id,
            "event": rec.event_id,
            "eventType": rec.event_type,
            "attempts": total,
            "status": status,
            "error": reason,
        }

        async def mark_dead() -> None:
            self._finisher.put(
                OutgoingOutcome(rec.id, "dead", rec.attempts, error=reason, attempt=attempt)
            )

        event = error_event(rec.id, rec.session, total, data)
        await dead_letter(self._bus, event, mark_dead, source="outbox")

    async def _poll(self) -> None:
        """Claim stored work that is due: retries and rows left by a stopped process."""
        while self._running:
            try:
                full = [sid for sid, n in self._held.items() if n >= HELD_PER_SUBSCRIPTION]
                claimed = await self._store.claim_outgoing(CLAIM_BATCH, self.lease, full)
                for rec in claimed:
                    if rec.id not in self._known:
                        self._enqueue(rec)
                if len(claimed) == CLAIM_BATCH:
                    await asyncio.sleep(0)
                    continue
                due = await self._store.next_outgoing_due()
                self.outbox_outage.succeeded()
            except Exception as exc:
                self.outbox_outage.failed(describe(exc))
                log.debug("could not read the outbox", exc_info=True)
                due = None
            wait = POLL_SECONDS if due is None else min(POLL_SECONDS, due - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))

    # -- replay from the command line

    async def attempt_now(self, ids: Iterable[str]) -> dict[str, str]:
        """One attempt for each of these pending rows that no running server holds (``dlq
        replay`` uses it); returns each id's state: delivered, retrying, dead or queued."""
        wanted = list(ids)
        claimed = {r.id: r for r in await self._store.claim_outgoing_ids(wanted, self.lease)}
        states: dict[str, str] = {}
        for delivery_id in wanted:
            rec = claimed.get(delivery_id)
            if rec is None:
                states[delivery_id] = "queued"  # a running server has it (or it is gone)
                continue
            sub = self._subs.get(rec.subscription_id)
            if sub is None:
                await self._dead(rec, "subscription is no longer configured", None)
                states[delivery_id] = "dead"
                continue
            body = await self._body(rec, sub)
            if body is None:
                states[delivery_id] = "dead"
                continue
            verdict = await self._attempt(rec, sub, body, hold=False)
            states[delivery_id] = {"done": "delivered", "retry": "retrying"}.get(
                verdict.outcome, "dead"
            )
        await self._finisher.drain()
        return states

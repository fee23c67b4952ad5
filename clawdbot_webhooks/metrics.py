"""Prometheus metrics of one runtime, and the readiness of its gateway.

Every runtime has its own ``CollectorRegistry`` (several servers in one process, as in the
tests, never share counters). The request path only updates dictionaries: requests,
actions and outgoing attempts are tallied in plain dictionaries (everything runs on
the event loop's thread, so no lock is needed) and turned into metric families only when
scraped, and nothing on that path reads the store. The gauges
that need the store (retry queue depth, dead letters) come from a collector whose numbers are
refreshed by ``/metrics`` before it renders, at most once per ``STORE_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How long store counts are reused between scrapes.
STORE_TTL = 2.0
#: How long a gateway probe's answer is reused (a failure is retried sooner).
PROBE_TTL = 10.0
PROBE_FAILED_TTL = 2.0
PROBE_TIMEOUT = 2.0
#: Action and outgoing durations: from a local echo (ms) to a slow agent run (minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: The label of requests to a hook that does not exist (their names are not kept: anybody
#: could make up millions of them).
UNKNOWN_HOOK = "_unknown"
_BREAKER_STATES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}


class GatewayHealth:
    """Whether the gateway can take work. A gateway with a ``ready`` attribute answers
    itself (the local one always can); any other is probed with a short timeout, and the
    answer is cached so a readiness poller cannot flood it."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway
        self._state: tuple[bool, str] | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    @property
    def last(self) -> bool | None:
        """The last known state without asking (None before the first check)."""
        ready = getattr(self._gateway, "ready", None)
        if isinstance(ready, bool):
            return ready
        return None if self._state is None else self._state[0]

    async def check(self) -> tuple[bool, str]:
        ready = getattr(self._gateway, "ready", None)
        if isinstance(ready, bool):
            return ready, "ok" if ready else "not connected"
        async with self._lock:
            if self._state is not None and time.monotonic() < self._until:
                return self._state
            try:
                await asyncio.wait_for(self._gateway.probe(), PROBE_TIMEOUT)
                self._state = (True, "ok")
            except Exception as exc:  # GatewayError, timeout, a plugin's own failure
                reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                self._state = (False, f"unavailable: {reason}")
            ttl = PROBE_TTL if self._state[0] else PROBE_FAILED_TTL
            self._until = time.monotonic() + ttl
            return self._state


class Tally(Collector):
    """A counter, or with ``buckets`` a histogram, by label values."""

    def __init__(
        self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...] = ()
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.buckets = buckets
        #: label values -> count (counter) or [count per bucket..., count above, sum]
        self.values: dict[tuple[str, ...], Any] = {}

    def inc(self, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0) + 1

    def observe(self, value: float, *labels: str) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket with le >= value
        row[-1] += value

    def collect(self) -> Iterator[Metric]:
        if not self.buckets:
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            for labels, count in self.values.items():
                counter.add_metric(list(labels), count)
            yield counter
            return
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        bounds = [*map(_float_text, self.buckets), "+Inf"]
        for labels, row in self.values.items():
            cumulative = list(itertools.accumulate(row[:-1]))
            histogram.add_metric(
                list(labels), list(zip(bounds, cumulative, strict=True)), sum_value=row[-1]
            )
        yield histogram


def _float_text(bound: float) -> str:
    return repr(float(bound))


class _StoreCollector(Collector):
    """Gauges read from the store and the outbox at scrape time (see ``Metrics.refresh``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        depth = GaugeMetricFamily(
            "clawdbot_webhooks_retry_queue_depth",
            "Deliveries waiting for a retry that is due later.",
            labels=["direction"],
        )
        dead = GaugeMetricFamily(
            "clawdbot_webhooks_dead_letters",
            "Deliveries in the dead-letter queue.",
            labels=["direction"],
        )
        for direction in ("incoming", "outgoing"):
            depth.add_metric([direction], m.counts.get(f"{direction}_waiting", 0))
            dead.add_metric([direction], m.counts.get(f"{direction}_dead", 0))
        yield depth
        yield dead
        up = GaugeMetricFamily(
            "clawdbot_webhooks_gateway_up",
            "1 when the gateway is reachable (last check), else 0.",
            labels=["type"],
        )
        up.add_metric([m.gateway_type], 1.0 if m.gateway_up() else 0.0)
        yield up
        breakers = GaugeMetricFamily(
            "clawdbot_webhooks_circuit_state",
            "Circuit breaker of each subscription's endpoint: 0 closed, 1 half-open, 2 open.",
            labels=["subscription"],
        )
        for sub, state in m.breaker_states().items():
            breakers.add_metric([sub], _BREAKER_STATES.get(state, 0.0))
        yield breakers


class Metrics:
    """The tallies the request path feeds, and at scrape time what the store, the gateway
    and the circuit breakers report: each passed in as what is read, so any part can be
    measured alone (the tests make one with none of them)."""

    def __init__(
        self,
        *,
        gateway_type: str = "none",
        gateway_health: GatewayHealth | None = None,
        queue_counts: Callable[[], Awaitable[dict[str, int]]] | None = None,
        breaker_states: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Tally(
            "clawdbot_webhooks_incoming_requests",
            "Requests to webhook URLs, by hook and HTTP status.",
            ["hook", "code"],
        )
        self.actions = Tally(
            "clawdbot_webhooks_action_duration_seconds",
            "Time an incoming delivery's action took, by hook and outcome "
            "(done, dropped, retry, dead).",
            ["hook", "outcome"],
            BUCKETS,
        )
        self.outgoing = Tally(
            "clawdbot_webhooks_outgoing_deliveries",
            "Outgoing delivery attempts by subscription and outcome (delivered, retry, dead).",
            ["subscription", "outcome"],
        )
        self.outgoing_latency = Tally(
            "clawdbot_webhooks_outgoing_duration_seconds",
            "Time an outgoing attempt took, by subscription.",
            ["subscription"],
            BUCKETS,
        )
        self.content_policy = Tally(
            "clawdbot_webhooks_content_policy_matches",
            "Text bound for an agent that matched a content-policy pattern class, by hook, "
            "pattern and the policy's mode (log, quarantine, block).",
            ["hook", "pattern", "mode"],
        )
        for tally in (
            self.requests,
            self.actions,
            self.outgoing,
            self.outgoing_latency,
            self.content_policy,
        ):
            self.registry.register(tally)
        self.counts: dict[str, int] = {}
        self._counted_at = -STORE_TTL
        self.gateway_type = gateway_type
        self.gateway_health = gateway_health
        self._queue_counts = queue_counts
        self._breaker_states = breaker_states
        self.registry.register(_StoreCollector(self))

    # -- the hot path

    def request(self, hook: str, code: int) -> None:
        self.requests.inc(hook, str(code))

    def content_policy_match(self, hook: str, pattern: str, mode: str) -> None:
        self.content_policy.inc(hook, pattern, mode)

    def action(self, hook: str, outcome: str, seconds: float) -> None:
        self.actions.observe(seconds, hook, outcome)

    def outgoing_attempt(self, subscription: str, outcome: str, seconds: float) -> None:
        self.outgoing.inc(subscription, outcome)
        self.outgoing_latency.observe(seconds, subscription)

    # -- scrape time

    def gateway_up(self) -> bool:
        return bool(self.gateway_health is not None and self.gateway_health.last)

    def breaker_states(self) -> Mapping[str, str]:
        return self._breaker_states()

    async def refresh(self) -> None:
        """Read the store's counts unless they are fresh enough; probe the gateway."""
        if self.gateway_health is not None:
            await self.gateway_health.check()
        if self._queue_counts is None or time.monotonic() - self._counted_at < STORE_TTL:
            return
        with contextlib.suppress(Exception):  # the store is down: keep the last numbers
            self.counts = await self._queue_counts()
            self._counted_at = time.monotonic()

    def render(self) -> bytes:
        return generate_latest(self.registry)

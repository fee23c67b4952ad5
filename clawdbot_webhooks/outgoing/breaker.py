"""A circuit breaker per outgoing endpoint.

Closed: deliveries go out. After ``threshold`` consecutive failed attempts it opens: nothing
goes to the endpoint for ``cooldown`` seconds (the waiting deliveries keep their place and
spend no attempts). Then one delivery is let through as a probe; its success closes the
breaker and wakes everyone, its failure opens it again for another cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from clawdbot_webhooks.config import Subscription

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, name: str, threshold: int, cooldown: float) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self._changed = asyncio.Event()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._probing else "open"

    async def admit(self) -> bool:
        """Wait until a delivery may go out; True when it is the probe of a half-open breaker
        (its caller must then report the result with ``record(..., probe=True)``)."""
        while self.opened_at is not None:
            wait = self.opened_at + self.cooldown - time.monotonic()
            if wait <= 0 and not self._probing:
                self._probing = True
                return True
            self._changed.clear()
            # With a probe in flight, wait for its verdict; otherwise for the cooldown's end.
            timeout = None if self._probing else max(wait, 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return False

    def configure(self, threshold: int, cooldown: float) -> None:
        """New settings, from a reload; those waiting out a cooldown look at it again."""
        self.threshold, self.cooldown = threshold, cooldown
        self._changed.set()

    def abandon_probe(self) -> None:
        """The probe ended without an answer (shutdown); let the next delivery probe."""
        self._probing = False
        self._changed.set()

    def record(self, healthy: bool, probe: bool = False) -> None:
        if probe:
            self._probing = False
        if healthy:
            if self.opened_at is not None:
                log.info("endpoint %s answers again; circuit closed", self.name)
            self.failures = 0
            self.opened_at = None
        else:
            self.failures += 1
            if probe or (self.opened_at is None and self.failures >= self.threshold):
                log.warning(
                    "endpoint %s failed %d times in a row; pausing it for %.1fs",
                    self.name,
                    self.failures,
                    self.cooldown,
                )
                self.opened_at = time.monotonic()
        self._changed.set()


class Breakers:
    """The circuit breakers of a set of subscriptions: one per endpoint URL, shared by the
    subscriptions that send to it, made when first needed. Held apart from the outbox so that
    whoever reports their states (metrics, the admin API) needs nothing else of it."""

    def __init__(self, subscriptions: Iterable[Subscription]) -> None:
        self._subs = list(subscriptions)
        self._by_url: dict[str, CircuitBreaker] = {}

    def update(self, subscriptions: Iterable[Subscription]) -> None:
        """A reloaded config's subscriptions: an endpoint's breaker keeps its state and takes
        the new threshold and cooldown (of the first subscription to it, as when made)."""
        self._subs = list(subscriptions)
        seen: set[str] = set()
        for sub in self._subs:
            breaker = self._by_url.get(sub.url)
            if breaker is None or sub.url in seen:
                continue
            seen.add(sub.url)
            breaker.configure(sub.breaker_threshold, sub.breaker_cooldown)

    def of(self, sub: Subscription) -> CircuitBreaker:
        breaker = self._by_url.get(sub.url)
        if breaker is None:
            breaker = CircuitBreaker(sub.url, sub.breaker_threshold, sub.breaker_cooldown)
            self._by_url[sub.url] = breaker
        return breaker

    def states(self) -> dict[str, str]:
        """Each subscription's circuit breaker: closed, open or half-open."""
        states = {}
        for sub in self._subs:
            breaker = self._by_url.get(sub.url)
            states[sub.id] = "closed" if breaker is None else breaker.state
        return states

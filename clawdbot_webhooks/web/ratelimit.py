"""Rate limits for the incoming server: token buckets per handler and per client address, and
a throttle on repeated authentication failures from one address.

Everything here is in memory and per process, measured on a monotonic clock, and bounded in
size: a flood from many addresses cannot grow the tables without limit (the least recently
seen addresses are forgotten first, which at worst hands such an address a fresh bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from clawdbot_webhooks.config import IncomingSettings, RateLimit

#: How many client addresses are remembered at most, per table.
MAX_ADDRESSES = 65_536


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class TokenBucket:
    """``rate`` tokens a second up to ``capacity``; a request takes one."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    @classmethod
    def from_config(cls, limit: RateLimit, now: float) -> TokenBucket:
        """``requests`` per ``per`` seconds, bursts of ``burst`` (default: ``requests``)."""
        return cls(limit.requests / limit.per, float(limit.burst or limit.requests), now)


class BucketsByKey:
    """One token bucket per key (a client address), least recently used forgotten first."""

    def __init__(self, limit: RateLimit, max_keys: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.from_config(self.limit, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class FailureThrottle:
    """At most ``max`` failures per key within ``window`` seconds; past that, refuse the key
    until its oldest failure leaves the window."""

    def __init__(self, max_failures: int, window: float, max_keys: int = MAX_ADDRESSES) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        #: Each key's failures within the window, oldest first; a key that never failed (the
        #: common case) is not here, which ``Limits.auth_blocked`` looks at first.
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, key: str, now: float) -> float:
        """0 when the key may try, else the seconds until it may try again."""
        times = self.failures.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.failures[key]
            return 0.0
        if len(times) < self.max_failures:
            return 0.0
        return times[0] + self.window - now

    def failed(self, key: str, now: float) -> None:
        times = self.failures.get(key)
        if times is None:
            times = self.failures[key] = deque(maxlen=self.max_failures)
            while len(self.failures) > self.max_keys:
                self.failures.popitem(last=False)
        else:
            self.failures.move_to_end(key)
        times.append(now)


class Limits:
    """The server's limits, built from ``incoming`` settings and the handlers' ``rateLimit``."""

    def __init__(
        self,
        incoming: IncomingSettings,
        handler_limits: Iterable[tuple[str, RateLimit | None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.per_ip: BucketsByKey | None = None
        self.auth: FailureThrottle | None = None
        self.handlers: dict[str, TokenBucket] = {}
        #: What the limits were built from (``configure``).
        self._settings: tuple[Any, Any, dict[str, RateLimit]] | None = None
        self.configure(incoming, handler_limits)

    def configure(
        self,
        incoming: IncomingSettings,
        handler_limits: Iterable[tuple[str, RateLimit | None]],
    ) -> None:
        """(Re)build the limits from settings. Each limit a reload leaves as it was keeps its
        state: the buckets of the addresses and of each handler, and the addresses blocked
        for failed authentication (an edit elsewhere lifts no throttle)."""
        limits = {hook: limit for hook, limit in handler_limits if limit}
        per_ip, failures = incoming.rate_limit_per_ip, incoming.auth_failures
        old = self._settings
        if old is None or per_ip != old[0]:
            self.per_ip = BucketsByKey(per_ip) if per_ip else None
        if old is None or failures != old[1]:
            self.auth = FailureThrottle(failures.max, failures.window) if failures else None
        before = {} if old is None else old[2]
        now = self.clock()
        self.handlers = {
            hook: self.handlers[hook]
            if before.get(hook) == limit and hook in self.handlers
            else TokenBucket.from_config(limit, now)
            for hook, limit in limits.items()
        }
        self._settings = (per_ip, failures, limits)

    def client(self, ip: str) -> float:
        """Take a token of the client's bucket: 0, or the seconds to wait."""
        return 0.0 if self.per_ip is None else self.per_ip.take(ip, self.clock())

    def handler(self, hook_id: str) -> float:
        bucket = self.handlers.get(hook_id)
        return 0.0 if bucket is None else bucket.take(self.clock())

    def auth_blocked(self, ip: str) -> float:
        auth = self.auth
        # Most addresses never failed: a look-up, with no further call or clock read.
        if auth is None or ip not in auth.failures:
            return 0.0
        return auth.blocked_for(ip, self.clock())

    def auth_failed(self, ip: str) -> None:
        if self.auth is not None:
            self.auth.failed(ip, self.clock())

"""Retry schedules, computed with the ``backoff`` library's wait generators."""

from __future__ import annotations

import itertools
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import backoff

BACKOFF_KINDS = ("exponential", "linear", "constant")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff: str = "exponential"
    initial_delay: float = 1.0
    max_delay: float = 3600.0
    jitter: bool = True

    def _waits(self) -> Generator[float, Any, None]:
        if self.backoff == "exponential":
            return backoff.expo(base=2, factor=self.initial_delay, max_value=self.max_delay)
        if self.backoff == "linear":
            steps = (self.initial_delay * n for n in itertools.count(1))
            return backoff.constant(interval=steps)
        return backoff.constant(interval=itertools.repeat(self.initial_delay))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        waits = self._waits()
        next(waits)  # the generators start with a bare yield that primes them
        value = min(next(itertools.islice(waits, attempt - 1, None)), self.max_delay)
        if self.jitter:
            # "Equal jitter": keep half the delay, randomise the other half, so a crowd of
            # failures spreads out while the schedule stays recognisable.
            value = value / 2 + backoff.full_jitter(value / 2)
        return float(value)

    def gives_up_after(self, attempt: int) -> bool:
        return attempt >= self.max_attempts

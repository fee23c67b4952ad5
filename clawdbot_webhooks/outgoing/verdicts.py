"""How an outgoing attempt ended, judged from the endpoint's answer: delivered, to be tried
again (and when, by ``Retry-After``), or dead; and whether the answer counts against the
endpoint's health (what the circuit breaker counts)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

from clawdbot_webhooks_hookspecs import OutgoingResponse

#: The longest ``Retry-After`` obeyed; a longer one is read as this.
RETRY_AFTER_CAP = 3600.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (delay-seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an attempt ended: ``done``, ``retry`` or ``dead``, and whether it says the endpoint
    is unhealthy (what the circuit breaker counts)."""

    outcome: str
    reason: str | None
    unhealthy: bool
    retry_after: float | None = None


def classify(response: OutgoingResponse, retry_on_4xx: bool) -> Verdict:
    status = response.status
    if status is None:
        return Verdict("retry", response.error or "no response", True)
    if 200 <= status < 300:
        return Verdict("done", None, False)
    reason = f"HTTP {status}"
    if status == 410:
        return Verdict("dead", "HTTP 410 Gone: the endpoint asked for no more deliveries", False)
    after = retry_after_seconds(_header(response.headers, "retry-after"))
    if status in (408, 429) or status >= 500:
        return Verdict("retry", reason, True, after)
    if 400 <= status < 500 and retry_on_4xx:
        return Verdict("retry", reason, False, after)
    return Verdict("dead", f"{reason} (not retried)", False)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None

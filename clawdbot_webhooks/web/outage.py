"""Storage outages as the webhook endpoint and ``/readyz`` see them.

Every failure to store a delivery (whatever the driver raised, or no answer within
``incoming.storeTimeout``) is answered 503 with ``Retry-After``; an outage is logged when it
starts and when it ends, with how many deliveries were refused meanwhile, not once per
request (a busy sender would otherwise fill the disk with the same line). After a failed
write the store counts as down for ``/readyz`` until a write succeeds again: a database that
answers reads but refuses writes (a full disk, a lock held from outside) must not look ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("clawdbot_webhooks.storage")

#: What a refused sender is told to wait before sending again, in seconds.
RETRY_AFTER = 5


#: What the webhook endpoint logs when an outage starts (the reason) and when it ends (how
#: long it lasted, how many deliveries were refused).
STARTED = "storage unavailable: %s; webhooks are answered 503 until a write succeeds"
ENDED = "storage available again after %.1fs; %d deliveries were answered 503 meanwhile"


class StoreOutage:
    """Whether the last store write failed, since when, and how many were refused since.
    ``started`` and ``ended`` are the two lines an outage logs (the inbox poller, which
    refuses nothing but tries again every second, says so in its own words)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        started: str = STARTED,
        ended: str = ENDED,
    ) -> None:
        self.clock = clock
        self.started, self.ended = started, ended
        self.since: float | None = None
        self.refused = 0
        self.reason = ""

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: str, *, refused: bool = True) -> None:
        """A write failed (``refused``: a delivery was answered 503 for it)."""
        if self.since is None:
            self.since, self.refused, self.reason = self.clock(), 0, reason
            log.error(self.started, reason)
        self.refused += refused

    def succeeded(self) -> None:
        """A write succeeded: the outage, if there was one, is over."""
        if self.since is None:
            return
        lasted = self.clock() - self.since
        log.warning(self.ended, lasted, self.refused)
        self.since, self.refused, self.reason = None, 0, ""


def poller_outage(table: str) -> StoreOutage:
    """The outage of a poller that reads ``table`` every second: logged when it starts and
    when it ends, not each second."""
    return StoreOutage(
        started=f"could not read the {table}: %s; trying again every second",
        ended=f"the {table} can be read again after %.1fs; %d reads failed meanwhile",
    )


def describe(exc: BaseException) -> str:
    """One line for the log: the exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def within(work: Awaitable[T], seconds: float) -> T:
    """``work`` within ``seconds``, else ``TimeoutError`` at once. Given up on, it is
    cancelled without being waited for: a database connection that hung can take as long to
    let go of a query as it took to hang, and the sender is not kept waiting for that."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise TimeoutError
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved

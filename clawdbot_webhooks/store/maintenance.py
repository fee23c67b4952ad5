"""Background upkeep of the store while a server runs: the lease heartbeat, retention, and
forgetting delivery ids older than the dedup window.

The heartbeat extends the leases of the deliveries this process is working on, so a lease
can be short (a crashed process's work is taken over soon after) while a long action or a
delivery waiting out its retries keeps its row. Retention deletes finished deliveries after
``storage.retention.delivered``; on PostgreSQL one process at a time does it (advisory lock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from clawdbot_webhooks.store.protocol import Store

log = logging.getLogger(__name__)

Held = Callable[[], tuple[Sequence[str], Sequence[str]]]


async def renew_forever(store: Store, held: Held, lease: float) -> None:
    """Every third of a lease, renew the leases of ``held()`` (incoming ids, outgoing ids)."""
    while True:
        await asyncio.sleep(lease / 3)
        incoming, outgoing = held()
        if not incoming and not outgoing:
            continue
        try:
            await store.renew_leases(incoming, outgoing, lease)
        except Exception as exc:  # the database is away: the loops notice it too
            log.warning("could not renew %d leases: %s", len(incoming) + len(outgoing), exc)


def retention_interval(age: float) -> float:
    """How often old rows are pruned: a tenth of their age limit, between 1 s and 1 h."""
    return min(3600.0, max(1.0, age / 10))


async def forget_forever(store: Store, window: float) -> None:
    """Let go of dedup keys older than ``window`` now and then, so the index stays small (a
    collision with an older key is let through by the store whether or not this has run)."""
    while True:
        try:
            forgotten = await store.prune_dedup(time.time() - window)
            if forgotten:
                log.debug("forgot %d delivery ids older than %gs", forgotten, window)
        except Exception as exc:  # the store is closing or briefly unavailable: next round
            log.warning("could not prune old delivery ids: %s", exc)
        await asyncio.sleep(retention_interval(window))


async def retain_forever(store: Store, age: float) -> None:
    """Delete deliveries finished more than ``age`` seconds ago, now and then."""
    while True:
        try:
            n = await store.prune_finished(time.time() - age)
            if n:
                log.info("retention: deleted %d deliveries finished over %gs ago", n, age)
        except Exception as exc:
            log.warning("retention: could not prune finished deliveries: %s", exc)
        await asyncio.sleep(retention_interval(age))

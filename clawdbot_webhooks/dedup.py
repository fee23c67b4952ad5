"""Replay protection by delivery id: which id names a request, and forgetting old ids.

A sender's delivery id (what its verifier returned, else one of ``DELIVERY_ID_HEADERS``) is
stored with the delivery; the store's unique index per hook turns a repeat into a duplicate.
Ids older than ``incoming.dedupWindow`` no longer count: the store checks the window when a
key collides, and ``prune_forever`` lets go of old keys so the index stays small.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)

#: Headers whose value identifies a delivery at its sender, so a repeat is recognised.
DELIVERY_ID_HEADERS = ("webhook-id", "svix-id", "x-github-delivery", "idempotency-key")
#: Longer ids are stored as their hash, so a sender cannot bloat the index.
MAX_KEY_LENGTH = 200


class _Prunable(Protocol):
    async def prune_dedup(self, before: float) -> int: ...


def dedup_key(sender_id: str | None, headers: Mapping[str, str]) -> str | None:
    """The id a repeat of this request would carry, or None when it has none."""
    key = sender_id or next((headers[h] for h in DELIVERY_ID_HEADERS if headers.get(h)), None)
    if key is None:
        return None
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH:
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return key or None


def prune_interval(window: float) -> float:
    """How often old keys are let go of: a tenth of the window, between 1 s and an hour."""
    return min(3600.0, max(1.0, window / 10))


async def prune_forever(store: _Prunable, window: float) -> None:
    """Let go of dedup keys older than ``window`` now and then, until cancelled."""
    while True:
        try:
            forgotten = await store.prune_dedup(time.time() - window)
            if forgotten:
                log.debug("forgot %d delivery ids older than %gs", forgotten, window)
        except Exception as exc:  # the store is closing or briefly unavailable: next round
            log.warning("could not prune old delivery ids: %s", exc)
        await asyncio.sleep(prune_interval(window))

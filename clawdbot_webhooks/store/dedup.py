"""Replay protection by delivery id: which id names a request, and forgetting old ids.

A sender's delivery id (what its verifier returned, else one of ``DELIVERY_ID_HEADERS``) is
stored with the delivery; the store's unique index per hook turns a repeat into a duplicate.
Ids older than ``incoming.dedupWindow`` no longer count: the store checks the window when a
key collides, and ``maintenance.forget_forever`` lets go of old keys so the index stays small.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

from clawdbot_webhooks.store.rows import storable

log = logging.getLogger(__name__)

#: Headers whose value identifies a delivery at its sender, so a repeat is recognised.
DELIVERY_ID_HEADERS = ("webhook-id", "svix-id", "x-github-delivery", "idempotency-key")
#: Longer ids are stored as their hash, so a sender cannot bloat the index.
MAX_KEY_LENGTH = 200


def dedup_key(sender_id: str | None, headers: Mapping[str, str]) -> str | None:
    """The id a repeat of this request would carry, or None when it has none."""
    key = sender_id or _sent_id(headers)
    if key is None:
        return None
    key = storable(key.strip())  # the id may come from the payload (a NUL in it, say)
    if len(key) > MAX_KEY_LENGTH:
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return key or None


def _sent_id(headers: Mapping[str, str]) -> str | None:
    """The first of ``DELIVERY_ID_HEADERS`` with a value (a loop: no generator per request)."""
    for name in DELIVERY_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None

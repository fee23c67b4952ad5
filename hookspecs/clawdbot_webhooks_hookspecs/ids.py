"""Ids that depend only on what caused them. Since 1.4."""

from __future__ import annotations

import hashlib


def derived_id(prefix: str, *parts: str) -> str:
    """``prefix_`` and 26 characters that depend on ``parts`` alone, so that a re-run after a
    crash repeats the id and receivers can deduplicate by it.

    When the first part is an id of the same shape (``new_id``'s, or one derived from it), the
    new id starts with its first 10 characters, the creation time: ids then sort as their
    causes do, and a store's index of them grows at its end rather than at a random page for
    every row. Since 1.4."""
    tail = parts[0].partition("_")[2]
    head = tail[:10] if len(tail) == 26 else ""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"{prefix}_{head}{digest[: 26 - len(head)]}"


def derived_event_id(*parts: str) -> str:
    """An event id derived from what caused it (see ``derived_id``): an event published again
    after a crash keeps its id, so subscribers see one event. Since 1.4."""
    return derived_id("evt", *parts)

"""Queries both backends build the same way: the delivery listing, and the per-endpoint
statistics gathered from their rows. SQL here uses ``?`` placeholders."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from clawdbot_webhooks.store.records import DeliveryQuery
from clawdbot_webhooks.store.rows import KIND_COLUMNS


def delivery_listing(kind: str, query: DeliveryQuery) -> tuple[str, list[Any]]:
    """The SQL (``?`` placeholders) and arguments of ``list_deliveries``, for every backend."""
    table, target, created = KIND_COLUMNS[kind]
    where: list[str] = []
    args: list[Any] = []
    if query.status:
        where.append("status=?")
        args.append(query.status)
    if query.target:
        where.append(f"{target}=?")
        args.append(query.target)
    if query.since is not None:
        where.append(f"{created}>=?")
        args.append(query.since)
    if query.finished_after is not None:
        where.append("finished_at>?")
        args.append(query.finished_after)
    if query.search:
        # A substring of the id (or, outgoing, of the event id); LIKE's wildcards escaped.
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", query.search) + "%"
        extra = " OR event_id LIKE ? ESCAPE '\\'" if kind == "outgoing" else ""
        where.append(f"(id LIKE ? ESCAPE '\\'{extra})")
        args.extend([pattern] * (2 if extra else 1))
    if query.cursor is not None:
        where.append(f"({created}, id) < (?, ?)")
        args.extend(query.cursor)
    order = f"{created} DESC, id DESC"
    if query.finished_after is not None:
        order = "finished_at, id"
    event = "event_type" if kind == "outgoing" else "NULL"
    sql = (
        f"SELECT id, {target}, status, attempts, {created}, finished_at, next_attempt_at, "
        f"last_error, session, {event} FROM {table}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT ?"
    )
    return sql, [*args, query.limit]


class EndpointStats:
    """``delivery_stats`` rows gathered the same way on every backend: per target of each
    direction, deliveries by status; for outgoing ones the attempts, how many succeeded, and
    the latest error."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], dict[str, Any]] = {}

    def _entry(self, kind: str, target: str) -> dict[str, Any]:
        return self._stats.setdefault(
            (kind, target),
            {
                "kind": kind,
                "target": target,
                "statuses": {},
                "attempts": 0,
                "succeeded": 0,
                "last_error": None,
                "last_error_at": None,
            },
        )

    def statuses(self, kind: str, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (target, status, count)."""
        for target, status, n in rows:
            self._entry(kind, target)["statuses"][status] = n

    def attempts(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (subscription, attempts, succeeded)."""
        for sub, n, ok in rows:
            entry = self._entry("outgoing", sub)
            entry["attempts"], entry["succeeded"] = n, int(ok or 0)

    def last_errors(self, kind: str, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (target, error, at)."""
        for target, error, at in rows:
            entry = self._entry(kind, target)
            entry["last_error"], entry["last_error_at"] = error, at

    def result(self) -> list[dict[str, Any]]:
        return list(self._stats.values())

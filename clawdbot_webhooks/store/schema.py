"""Schema versions: each backend records the numbered migrations it has applied in a
``schema_migrations`` table and applies the missing ones at start-up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(slots=True)
class SchemaStatus:
    """What ``db status`` shows: the backend, which migrations are applied and which are
    pending, and how many rows each table holds by status (empty when there is no schema)."""

    backend: str
    url: str
    applied: list[tuple[int, str, float]]
    pending: list[tuple[int, str]]
    counts: dict[str, dict[str, int]]

"""``clawdbot-webhooks db``: the store's schema version and contents.

``db status`` shows which migrations are applied and which are pending, and how many rows
each table holds by status, without changing anything; ``db upgrade`` applies the pending
ones (a server does that at start-up too; several starting together apply each once).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from clawdbot_webhooks.cli.support import config_option, json_option, with_store
from clawdbot_webhooks.store import SchemaStatus, Store, StoreUnavailable


def _status(config_path: str | None, migrate: bool) -> SchemaStatus:
    async def work(settings: Any, plugins: Any, store: Store) -> SchemaStatus:
        return await store.schema_status()

    try:
        return with_store(config_path, work, migrate=migrate, store_only=True)
    except StoreUnavailable as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


def _as_dict(status: SchemaStatus) -> dict[str, Any]:
    return {
        "backend": status.backend,
        "url": status.url,
        "version": max((v for v, _, _ in status.applied), default=0),
        "applied": [{"version": v, "name": n, "applied_at": at} for v, n, at in status.applied],
        "pending": [{"version": v, "name": n} for v, n in status.pending],
        "counts": status.counts,
    }


def _show(status: SchemaStatus, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_as_dict(status), indent=2))
        return
    version = max((v for v, _, _ in status.applied), default=0)
    click.echo(f"Storage: {status.url} ({status.backend}), schema version {version}")
    for v, name, at in status.applied:
        when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        click.echo(f"  applied  {v:>3}  {name}  ({when})")
    for v, name in status.pending:
        click.echo(f"  pending  {v:>3}  {name}")
    for table, counts in status.counts.items():
        parts = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "empty"
        click.echo(f"  {table}: {parts}")


@click.group()
def db() -> None:
    """The store's schema: status (applied and pending migrations, row counts) and upgrade."""


@db.command()
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """Show applied and pending migrations and row counts (changes nothing)."""
    _show(_status(config_path, migrate=False), as_json)


@db.command()
@config_option
@json_option
def upgrade(config_path: str | None, as_json: bool) -> None:
    """Apply pending migrations (safe while servers run; each is applied once)."""
    before = _status(config_path, migrate=False)
    after = _status(config_path, migrate=True)
    if not as_json:
        n = len(before.pending) - len(after.pending)
        click.echo(f"Applied {n} migration{'s' if n != 1 else ''}.")
    _show(after, as_json)

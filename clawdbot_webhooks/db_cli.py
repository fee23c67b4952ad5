"""``clawdbot-webhooks db``: the store's schema version and contents.

``db status`` shows which migrations are applied and which are pending, and how many rows
each table holds by status, without changing anything; ``db upgrade`` applies the pending
ones (a server does that at start-up too; several starting together apply each once).
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .store import SchemaStatus, StoreUnavailable, open_store

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (JSON5). Default: $CLAWDBOT_WEBHOOKS_CONFIG, ~/.clawdbot/clawdbot.json, "
    "~/.openclaw/openclaw.json.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _status(config_path: str | None, migrate: bool) -> SchemaStatus:
    from .cli import _load

    settings, _ = _load(config_path)

    async def run() -> SchemaStatus:
        store = open_store(
            settings.storage_url,
            settings.synchronous,
            schema=settings.storage_schema,
            pool_size=2,
            migrate=migrate,
        )
        await store.open()
        try:
            return await store.schema_status()
        finally:
            await store.close()

    try:
        return asyncio.run(run())
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

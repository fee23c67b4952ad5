"""What every ``clawdbot-webhooks`` subcommand shares: the ``--config`` and ``--json``
options, loading the config (or exiting with its errors), times, tables, and a store opened
for one command."""

from __future__ import annotations

import asyncio
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import click

from clawdbot_webhooks.config import (
    STORE_KEYS,
    ClawdbotsOwnFile,
    ConfigError,
    Settings,
    load_settings,
)
from clawdbot_webhooks.plugins import PluginError, PluginSet
from clawdbot_webhooks.store import Store, open_store

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (JSON5). Default: $CLAWDBOT_WEBHOOKS_CONFIG, ~/.clawdbot/webhooks.json5, "
    "~/.openclaw/webhooks.json5 (the directories follow $CLAWDBOT_STATE_DIR, "
    "$OPENCLAW_STATE_DIR).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def load_or_exit(
    config_path: str | None, *, store_only: bool = False
) -> tuple[Settings, PluginSet]:
    """The validated config and its plugins; on errors, print them all and exit 2. With
    ``store_only``, just what opening the store takes (``STORE_KEYS``)."""
    try:
        return load_settings(config_path, only=STORE_KEYS if store_only else None)
    except ClawdbotsOwnFile as exc:
        click.echo(f"Error: {exc.errors[0]}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        where = f" in {exc.source}" if exc.source else ""
        click.echo(f"Config errors{where}:", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)
    except PluginError as exc:
        click.echo(f"Plugin error: {exc}", err=True)
        sys.exit(2)


def load_for_reading(config_path: str | None) -> tuple[Settings, PluginSet]:
    """The whole config for a command that only reads, when it loads; else (a variable it
    names not set here, say) what opening the store takes, with a line saying so."""
    try:
        return load_settings(config_path)
    except (ConfigError, PluginError) as exc:
        first = exc.errors[0] if isinstance(exc, ConfigError) and exc.errors else str(exc)
        click.echo(
            f"Note: the config loads only in part here ({first}): shown without it", err=True
        )
        return load_or_exit(config_path, store_only=True)


def with_store(
    config_path: str | None,
    work: Callable[[Settings, PluginSet, Store], Awaitable[T]],
    *,
    migrate: bool = True,
    store_only: bool = False,
    reading: bool = False,
) -> T:
    """Run ``work`` with the configured store open (a small pool: one command, one user).
    ``store_only``: a command that only reads the store loads only what that takes;
    ``reading``: one that reads uses the rest of the config where it loads
    (``load_for_reading``)."""
    if reading:
        settings, plugins = load_for_reading(config_path)
    else:
        settings, plugins = load_or_exit(config_path, store_only=store_only)

    async def run() -> T:
        store = open_store(
            settings.storage.url,
            settings.storage.synchronous,
            schema=settings.storage.schema,
            pool_size=2,
            migrate=migrate,
        )
        await store.open()
        try:
            return await work(settings, plugins, store)
        finally:
            for _, transport in plugins.registries.transports.items():
                close = getattr(transport, "close", None)
                if close is not None:
                    await close()
            await store.close()

    return asyncio.run(run())


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """``2024-01-15``, ``2024-01-15T10:30:00Z`` (naive means UTC), epoch seconds, or a
    duration such as ``90m`` / ``2h`` / ``7d`` meaning that long ago."""
    now = time.time() if now is None else now
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):  # "nan" and "inf" read as numbers, but name no time
            return seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected an ISO 8601 date/time, epoch seconds, or a duration like 2h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A click callback turning a TIME option into epoch seconds."""
    return None if value is None else parse_time(value)


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Left-aligned columns, the first row as the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())

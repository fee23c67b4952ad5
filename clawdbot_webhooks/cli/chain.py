"""``clawdbot-webhooks deliveries show ID``: one delivery and everything it belongs to, read
from the store as the other ``deliveries`` commands do. An incoming delivery with its
attempts and the events it caused, each with its outgoing deliveries; an outgoing one with
its event and the incoming delivery that caused it, then that delivery's chain."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from clawdbot_webhooks.cli.support import config_option, format_time, json_option, with_store
from clawdbot_webhooks.config import Settings
from clawdbot_webhooks.plugins import PluginSet
from clawdbot_webhooks.store import Store
from clawdbot_webhooks.web.admin.api import incoming_view, outgoing_view


@dataclass(frozen=True)
class _Views:
    """What the admin API's views read, without a running server."""

    store: Store
    settings: Settings


@dataclass
class Found:
    """The delivery asked for: an outgoing one's view (if it is one) and the incoming
    delivery's view (the one asked for, or the one that caused the outgoing one)."""

    outgoing: dict[str, Any] | None
    incoming: dict[str, Any] | None


async def find(store: Store, settings: Settings, delivery_id: str) -> Found | None:
    views = _Views(store, settings)
    out = await store.get_outgoing(delivery_id)
    if out is not None:
        cause = await store.get_incoming(out.causation) if out.causation else None
        incoming = None if cause is None else await incoming_view(views, cause)
        return Found(await outgoing_view(views, out), incoming)
    inc = await store.get_incoming(delivery_id)
    return None if inc is None else Found(None, await incoming_view(views, inc))


def _first_line(text: str | None) -> str:
    return f"  {text.splitlines()[0][:100]}" if text else ""


def _outgoing_line(d: dict[str, Any]) -> str:
    return (
        f"outgoing {d['id']}  {d['subscription']}  {d['url'] or '(unsubscribed)'}  "
        f"{d['status']}  attempts {d['attempts']}{_first_line(d['last_error'])}"
    )


def tree(found: Found) -> list[str]:
    """The chain as indented lines."""
    lines: list[str] = []
    out = found.outgoing
    if out is not None:
        lines.append(_outgoing_line(out))
        event = out["event"]
        if event is None:
            lines.append(f"  event {out['event_type']} {out['event_id']}  (no longer stored)")
        else:
            lines.append(f"  event {event['type']} {event['id']}  ({event['source']})")
        if found.incoming is None:
            cause = out["causation"]
            lines.append(
                f"  caused by {cause} (not stored)" if cause else "  caused by no delivery"
            )
            return lines
        lines.append(f"  caused by incoming {found.incoming['id']}")
        lines.append("")
    inc = found.incoming
    assert inc is not None
    lines.append(
        f"incoming {inc['id']}  hook {inc['hook']}  {inc['status']}  attempts {inc['attempts']}  "
        f"session {inc['session']}{_first_line(inc['last_error'])}"
    )
    for a in inc["history"]:
        status = f"HTTP {a['status']}" if a["status"] is not None else "failed"
        lines.append(
            f"  attempt {a['number']}  {format_time(a['at'])}  {status}{_first_line(a['error'])}"
        )
    for event in inc["caused"]:
        lines.append(f"  event {event['type']} {event['id']}  ({event['source']})")
        lines.extend(f"    {_outgoing_line(d)}" for d in event["deliveries"])
    return lines


@click.command("show")
@config_option
@json_option
@click.argument("delivery_id")
def show(config_path: str | None, as_json: bool, delivery_id: str) -> None:
    """A delivery and its chain: an incoming one's attempts and the events it caused, each
    with its outgoing deliveries; for an outgoing one, its event and the incoming delivery
    that caused it, then that chain. --json: what the admin API answers for ID."""

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> Found | None:
        return await find(store, settings, delivery_id)

    found = with_store(config_path, work, reading=True)
    if found is None:
        click.echo(f"Error: no incoming or outgoing delivery {delivery_id!r}", err=True)
        sys.exit(1)
    if as_json:
        view = found.outgoing if found.outgoing is not None else found.incoming
        click.echo(json.dumps(view, indent=2, ensure_ascii=False, default=str))
        return
    for line in tree(found):
        click.echo(line)

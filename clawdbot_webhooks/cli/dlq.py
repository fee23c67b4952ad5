"""``clawdbot-webhooks dlq``: list, inspect, replay and purge dead letters.

Replaying an outgoing dead letter makes it pending again and then tries to claim it: when a
server is running it may have claimed it first (it polls every second) and delivers it;
otherwise this process makes the attempt itself, so a replay works with no server at all. A
failed replay attempt leaves the delivery pending with its retry scheduled for the server.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TypeVar

import click

from clawdbot_webhooks.cli.support import (
    config_option,
    format_time,
    json_option,
    print_table,
    time_option,
    with_store,
)
from clawdbot_webhooks.config import Settings
from clawdbot_webhooks.events import EventBus
from clawdbot_webhooks.outgoing.outbox import Outbox
from clawdbot_webhooks.plugins import PluginSet
from clawdbot_webhooks.store import DeadLetter, Store, attempts_made

T = TypeVar("T")

#: Above this many deliveries ``replay --all`` shows a progress bar.
PROGRESS_FROM = 20


def _letter(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "kind": d.kind,
        "target": d.target,
        "created_at": d.created_at,
        "attempts": d.attempts,
        "error": d.error,
    }


async def _history(store: Store, delivery_id: str) -> list[dict[str, Any]]:
    return [
        {
            "number": a.number,
            "at": a.at,
            "status": a.status,
            "latency_ms": a.latency_ms,
            "error": a.error,
            "response": a.response,
        }
        for a in await store.attempts(delivery_id)
    ]


@click.group()
def dlq() -> None:
    """Dead letters: deliveries that kept failing (incoming actions and outgoing webhooks)."""


@dlq.command("list")
@config_option
@json_option
@click.option(
    "--since",
    metavar="TIME",
    default=None,
    callback=time_option,
    help="Only those created since TIME.",
)
def list_(config_path: str | None, as_json: bool, since: float | None) -> None:
    """List dead letters, oldest first."""

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> list[DeadLetter]:
        return await store.dead_letters(since)

    letters = with_store(config_path, work, store_only=True)
    if as_json:
        click.echo(json.dumps([_letter(d) for d in letters], indent=2, ensure_ascii=False))
        return
    if not letters:
        click.echo("No dead letters.")
        return
    rows = [("ID", "KIND", "TARGET", "CREATED", "ATTEMPTS", "ERROR")]
    for d in letters:
        error = (d.error or "-").splitlines()[0][:80]
        rows.append((d.id, d.kind, d.target, format_time(d.created_at), str(d.attempts), error))
    print_table(rows)


@dlq.command()
@config_option
@json_option
@click.argument("delivery_id")
def show(config_path: str | None, as_json: bool, delivery_id: str) -> None:
    """Show one delivery (dead or not) with its payload and every attempt."""

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> dict[str, Any] | None:
        out = await store.get_outgoing(delivery_id)
        if out is not None:
            history = await _history(store, out.id)
            return {
                "id": out.id,
                "kind": "outgoing",
                "subscription": out.subscription_id,
                "event": out.event_id,
                "type": out.event_type,
                "session": out.session,
                "status": out.status,
                "attempts": attempts_made("outgoing", out.status, out.attempts, len(history)),
                "created_at": out.created_at,
                "error": out.last_error,
                "payload": out.payload.decode("utf-8", "replace"),
                "history": history,
            }
        inc = await store.get_incoming(delivery_id)
        if inc is None:
            return None
        history = await _history(store, inc.id)
        return {
            "id": inc.id,
            "kind": "incoming",
            "hook": inc.hook_id,
            "session": inc.session,
            "status": inc.status,
            "attempts": attempts_made("incoming", inc.status, inc.attempts, len(history)),
            "created_at": inc.received_at,
            "error": inc.last_error,
            "payload": inc.body.decode("utf-8", "replace"),
            # The attempts that failed (a success is the delivery's status and result).
            "history": history,
        }

    found = with_store(config_path, work, store_only=True)
    if found is None:
        click.echo(f"No delivery {delivery_id!r}.", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    for key in ("id", "kind", "subscription", "hook", "event", "type", "session", "status"):
        if found.get(key) is not None:
            click.echo(f"{key + ':':14}{found[key]}")
    click.echo(f"{'created:':14}{format_time(found['created_at'])}")
    click.echo(f"{'attempts:':14}{found['attempts']}")
    click.echo(f"{'error:':14}{found['error'] or '-'}")
    click.echo(f"payload:\n  {found['payload']}")
    if found["history"]:
        rows = [("#", "AT", "STATUS", "MS", "ERROR", "RESPONSE")]
        for a in found["history"]:
            response = (a["response"] or "-").replace("\n", " ")[:60]
            rows.append(
                (
                    str(a["number"]),
                    format_time(a["at"]),
                    "-" if a["status"] is None else str(a["status"]),
                    f"{a['latency_ms']:.1f}",
                    a["error"] or "-",
                    response,
                )
            )
        print_table(rows)


@dlq.command()
@config_option
@json_option
@click.argument("delivery_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option(
    "--since",
    metavar="TIME",
    default=None,
    callback=time_option,
    help="With --all: only those since TIME.",
)
def replay(
    config_path: str | None,
    as_json: bool,
    delivery_id: str | None,
    replay_all: bool,
    since: float | None,
) -> None:
    """Deliver dead letters again: ID, or --all [--since TIME]."""
    if bool(delivery_id) == replay_all:
        raise click.UsageError("give either a delivery ID or --all")
    if since is not None and not replay_all:
        raise click.UsageError("--since goes with --all")

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> dict[str, str]:
        if replay_all:
            letters = await store.dead_letters(since)
        else:
            letters = [d for d in await store.dead_letters() if d.id == delivery_id]
        if not letters:
            return {}
        bus = EventBus(plugins.pm)
        outbox = Outbox(settings.outgoing, store, bus, plugins.registries.transports)
        bus.subscribe(outbox.record)
        states: dict[str, str] = {}
        revived = set(await store.revive([d.id for d in letters]))
        outgoing = [d.id for d in letters if d.kind == "outgoing" and d.id in revived]
        for d in letters:
            if d.id in revived and d.kind == "incoming":
                states[d.id] = "queued"  # the server's pipeline runs it
        if len(outgoing) >= PROGRESS_FROM and not as_json:
            with click.progressbar(length=len(outgoing), label="Replaying", file=sys.stderr) as bar:
                for i in range(0, len(outgoing), 50):
                    chunk = outgoing[i : i + 50]
                    states.update(await outbox.attempt_now(chunk))
                    bar.update(len(chunk))
        elif outgoing:
            states.update(await outbox.attempt_now(outgoing))
        await bus.drain(timeout=5)
        return states

    states = with_store(config_path, work)
    if not states:
        if delivery_id:
            click.echo(f"No dead letter {delivery_id!r}.", err=True)
            sys.exit(1)
        click.echo("No dead letters to replay.")
        return
    if as_json:
        click.echo(json.dumps(states, indent=2))
        return
    for key, state in states.items():
        click.echo(f"{key}: {_DESCRIBE[state]}")
    counts = {s: sum(1 for v in states.values() if v == s) for s in sorted(set(states.values()))}
    click.echo("Replayed " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    if "dead" in counts:
        sys.exit(1)


_DESCRIBE = {
    "delivered": "delivered",
    "retrying": "attempt failed; pending, the server retries it on schedule",
    "queued": "pending; the running server delivers it",
    "dead": "failed again; back in the dead letters",
}


@dlq.command()
@config_option
@click.option(
    "--before",
    metavar="TIME",
    default=None,
    callback=time_option,
    help="Only those created before TIME.",
)
def purge(config_path: str | None, before: float | None) -> None:
    """Delete dead letters for good (all, or those created before TIME)."""

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> int:
        return await store.purge_dead(before)

    n = with_store(config_path, work)
    click.echo(f"Purged {n} dead letter{'s' if n != 1 else ''}.")

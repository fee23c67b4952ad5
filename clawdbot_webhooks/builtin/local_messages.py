"""``clawdbot-webhooks messages``: the local gateway's message log, a command the local gateway
plugin adds itself (``register_commands``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
from clawdbot_webhooks_hookspecs import BOUNDARY_END, BOUNDARY_START, CommandEnv

from clawdbot_webhooks.builtin.local_log import read_log


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (JSON5). Default: as for every other command.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--session", default=None, help="Only this session.")
def messages(config_path: str | None, as_json: bool, session: str | None) -> None:
    """The local gateway's message log: what send_message sent, what the echo agent said,
    the replies delivered to chats and the wakes."""
    env = click.get_current_context().find_object(CommandEnv)
    if env is None:
        raise click.UsageError("run as a clawdbot-webhooks command")
    state_dir = Path(env.state_dir(config_path))
    log = [m for m in read_log(state_dir) if session is None or m["session"] == session]
    if as_json:
        click.echo(json.dumps(log, indent=2, ensure_ascii=False))
        return
    if not log:
        click.echo("No messages yet.")
        return
    rows: list[tuple[str, ...]] = [("TIME", "KIND", "SESSION", "TO/AGENT", "TEXT")]
    for m in log:
        if m["kind"] == "sent":
            who = f"{m['channel']}:{m['peer']}"
        elif m["kind"] == "wake":
            who = f"main ({json.loads(m['options'] or '{}').get('mode', 'now')})"
        else:
            who = m["agent_id"]
        at = datetime.fromtimestamp(m["at"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        rows.append((at, m["kind"], m["session"], who or "-", _one_line(m["text"])))
    _print_table(rows)


def _one_line(text: str) -> str:
    """A row per message: a prompt wrapped in the untrusted-content boundary is shown as the
    content inside it, marked so (``--json`` has the whole text); other newlines as ⏎."""
    if BOUNDARY_START in text and BOUNDARY_END in text:
        inside = text.split(BOUNDARY_START, 1)[1].rsplit(BOUNDARY_END, 1)[0]
        text = "[untrusted] " + inside.split("\n---\n", 1)[-1].strip()
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


__all__ = ["messages"]

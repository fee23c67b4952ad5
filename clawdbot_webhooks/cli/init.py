"""``clawdbot-webhooks init``: a commented starter config with fresh secrets, the gateway
discovered when Clawdbot is there, and (``--bridge``) the event-bridge plugin installed into
Clawdbot through Clawdbot's own CLI. Clawdbot's config file is never written here: its CLI
does that itself."""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from clawdbot_webhooks_hookspecs import find_clawdbot_config

from clawdbot_webhooks.config.paths import CONFIG_ENV, default_path

BRIDGE_ID = "clawdbot-event-bridge"
#: The plugin ships inside the package, so a wheel install has it too.
BRIDGE_SOURCE = Path(__file__).resolve().parents[1] / BRIDGE_ID
CLI_ENV = "CLAWDBOT_CLI"

TEMPLATE = """\
// clawdbot-webhooks config, written by `clawdbot-webhooks init` on {date}.
// Only the `webhooks` key is read. Every key: docs/configuration.md. While `serve` runs,
// saving this file applies the change (or send SIGHUP); docs/operations.md says which keys
// need a restart. The secrets below were generated for this file: keep it private (0600).
{{
  webhooks: {{
    incoming: {{
      host: "127.0.0.1",
      port: {port},
      // Callers send it in the X-Webhook-Secret header (per-provider signatures:
      // docs/security.md).
      secret: "{secret}",{ingress}
    }},
    handlers: [
      // curl -X POST http://127.0.0.1:{port}/webhook/hello -H "X-Webhook-Secret: <secret>" \\
      //   -H "Content-Type: application/json" -d '{{"text": "hi"}}'
      {{ id: "hello", action: "run_agent", agentId: "main",
        template: "A webhook arrived: {{{{ event.text | default(event | json) }}}}" }},
    ],
    // Events (agent replies, sessions, errors) POSTed to your URLs, signed with `secret`.
    outgoing: [
      // {{ id: "my-app", url: "https://example.com/clawdbot-events",
      //   events: ["agent_response", "error"], secret: "{sub_secret}" }},
    ],
    {gateway_comment}
    gateway: {gateway},
    // The admin API and dashboard: http://127.0.0.1:{port}/admin (Bearer <token>).
    admin: {{ enabled: true, token: "{admin_token}" }},
  }},
}}
"""


def _gateway() -> tuple[str, str, str]:
    """(gateway entry, the comment above it, a line for the summary)."""
    found = find_clawdbot_config()
    if found is None:
        return (
            '{ type: "local" }',
            "// No Clawdbot config was found: the embedded local gateway (an echo agent).\n"
            '    // Beside Clawdbot, use { type: "clawdbot" } (docs/clawdbot.md).',
            "gateway: local (no Clawdbot config found)",
        )
    return (
        '{ type: "clawdbot" }',
        f"// Clawdbot's URL and token are read from {found} (read-only) at start-up.",
        f"gateway: clawdbot (URL and token read from {found} at each start; "
        "check --probe says which)",
    )


def render(port: int, bridge_token: str | None) -> tuple[str, str]:
    """The starter file and the summary line about its gateway."""
    gateway, comment, summary = _gateway()
    ingress = ""
    if bridge_token is not None:
        ingress = (
            "\n      // The Clawdbot event-bridge plugin sends to /events/ingest with this token."
            f'\n      eventIngress: {{ token: "{bridge_token}" }},'
        )
    text = TEMPLATE.format(
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        port=port,
        secret=secrets.token_urlsafe(32),
        ingress=ingress,
        sub_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        gateway_comment=comment,
        gateway=gateway,
        admin_token=secrets.token_urlsafe(32),
    )
    return text, summary


def clawdbot_command(given: str | None) -> list[str] | None:
    """Clawdbot's CLI: ``--clawdbot``, ``$CLAWDBOT_CLI`` (a command line such as
    ``node /path/to/entry.js``), else ``clawdbot`` or ``openclaw`` on the PATH."""
    line = given or os.environ.get(CLI_ENV, "").strip()
    if line:
        return shlex.split(line)
    for name in ("clawdbot", "openclaw"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _run(command: list[str], what: str) -> None:
    click.echo(f"$ {shlex.join(command)}")
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        click.echo(f"Error: {what}: {exc}", err=True)
        sys.exit(1)
    output = (proc.stdout + proc.stderr).strip()
    if output:
        click.echo("  " + output.replace("\n", "\n  "))
    if proc.returncode != 0:
        click.echo(f"Error: {what} failed (exit {proc.returncode})", err=True)
        sys.exit(1)


def install_bridge(
    cli: list[str], source: Path, ingress_url: str, token: str, apply_config: bool
) -> None:
    """``plugins install`` and then the plugin's one config entry, through Clawdbot's CLI."""
    _run([*cli, "plugins", "install", str(source)], "installing the event-bridge plugin")
    entry = f'{{url: "{ingress_url}", token: "{token}"}}'
    key = f"plugins.entries.{BRIDGE_ID}.config"
    if apply_config:
        _run([*cli, "config", "set", key, entry, "--json"], "configuring the event bridge")
    else:
        click.echo("Add this entry to Clawdbot's config (Clawdbot's own CLI does it):")
        click.echo(f"  {shlex.join([*cli, 'config', 'set', key, entry, '--json'])}")


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Where to write. Default: ${CONFIG_ENV}, else webhooks.json5 in Clawdbot's state "
    "directory (~/.clawdbot/webhooks.json5).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=3011, show_default=True, help="incoming.port."
)
@click.option(
    "--bridge",
    is_flag=True,
    help="Also install the event-bridge plugin into Clawdbot (with Clawdbot's CLI) and "
    "configure it to send to this server.",
)
@click.option(
    "--no-apply",
    is_flag=True,
    help="With --bridge: print Clawdbot's config command instead of running it.",
)
@click.option(
    "--clawdbot",
    "clawdbot_cli",
    default=None,
    help=f"Clawdbot's CLI command line. Default: ${CLI_ENV}, else clawdbot on the PATH.",
)
@click.option(
    "--bridge-source",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="The plugin's directory. Default: the copy installed with this package.",
)
def init(
    config_path: str | None,
    force: bool,
    port: int,
    bridge: bool,
    no_apply: bool,
    clawdbot_cli: str | None,
    bridge_source: str | None,
) -> None:
    """Write a starter config with fresh secrets (refuses to overwrite without --force)."""
    given = config_path or os.environ.get(CONFIG_ENV, "").strip()
    path = Path(given).expanduser() if given else default_path()
    clawdbots = find_clawdbot_config()
    if path.name in {"clawdbot.json", "openclaw.json"} or (
        clawdbots is not None and path.resolve() == clawdbots.resolve()
    ):
        click.echo(
            f"Error: {path} is Clawdbot's own config; ours goes in {default_path()}", err=True
        )
        sys.exit(2)
    if path.exists() and not force:
        click.echo(f"Error: {path} exists; not overwritten (use --force to replace it)", err=True)
        sys.exit(1)
    cli: list[str] | None = None
    source = Path(bridge_source) if bridge_source else BRIDGE_SOURCE
    if bridge:
        cli = clawdbot_command(clawdbot_cli)
        if cli is None:
            click.echo(
                f"Error: --bridge needs Clawdbot's CLI: none on the PATH (give --clawdbot or "
                f"${CLI_ENV})",
                err=True,
            )
            sys.exit(1)
        if not (source / "clawdbot.plugin.json").is_file():
            click.echo(
                f"Error: no event-bridge plugin at {source} (give --bridge-source)", err=True
            )
            sys.exit(1)
    token = secrets.token_urlsafe(32) if bridge else None
    text, summary = render(port, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created private: it holds the secrets.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)
    click.echo(f"Wrote {path}")
    click.echo(f"  {summary}")
    if cli is not None and token is not None:
        install_bridge(cli, source, f"http://127.0.0.1:{port}/events/ingest", token, not no_apply)
        click.echo("Restart the Clawdbot gateway to load the plugin.")
    # Found again without the flag: the default path, or $CLAWDBOT_WEBHOOKS_CONFIG.
    flag = f" --config {shlex.quote(str(path))}" if config_path else ""
    click.echo("Next:")
    click.echo(f"  clawdbot-webhooks check --probe{flag}   # the config, and Clawdbot answering")
    click.echo(f"  clawdbot-webhooks serve{flag}           # listens on 127.0.0.1:{port}")
    click.echo("  Then edit the handlers; docs/configuration.md has every key.")

"""The ``clawdbot-webhooks`` command."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sys
from dataclasses import asdict

import click
from clawdbot_webhooks_hookspecs import GatewayError

from clawdbot_webhooks import __version__
from clawdbot_webhooks.cli.plugin_commands import PluginCommandsGroup, command_env
from clawdbot_webhooks.cli.support import (
    config_option,
    json_option,
    load_or_exit,
    print_table,
)
from clawdbot_webhooks.config import ConfigError, find_config
from clawdbot_webhooks.eventloop import CHOICES, LoopUnavailable, loop_factory
from clawdbot_webhooks.plugins import PluginError, load_plugins
from clawdbot_webhooks.store import redact_url


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(cls=PluginCommandsGroup)
@click.version_option(__version__, prog_name="clawdbot-webhooks")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Webhooks for Clawdbot: incoming hooks become actions, events go out to URLs."""
    # Plugins' commands (register_commands) find the config through it.
    ctx.obj = command_env()


@main.command()
@config_option
@click.option("--host", default=None, help="Listen address (default: incoming.host).")
@click.option("--port", type=int, default=None, help="Listen port (default: incoming.port).")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Default: logging.level of the config, else info.",
)
@click.option(
    "--log-format",
    default=None,
    type=click.Choice(["text", "json"]),
    help="json: one object per line. Default: logging.format of the config, else text.",
)
@click.option(
    "--loop",
    "loop_choice",
    default="auto",
    show_default=True,
    type=click.Choice(CHOICES),
    help="Event loop: auto is uvloop when installed, else asyncio's own.",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    log_level: str | None,
    log_format: str | None,
    loop_choice: str,
) -> None:
    """Run the server until SIGTERM or SIGINT (then shut down gracefully)."""
    _logging(log_level or "info")
    try:
        new_loop = loop_factory(loop_choice)
    except LoopUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    settings, plugins = load_or_exit(config_path)
    from clawdbot_webhooks.logs import Redactor, collect_secrets, configure

    # One for the log and the admin views alike, so a reload's new secrets reach both.
    redactor = Redactor(collect_secrets(settings))
    configure(log_format or settings.logging.format, log_level or settings.logging.level, redactor)
    from clawdbot_webhooks.runtime import Runtime
    from clawdbot_webhooks.web.app import serve as run

    host = host or settings.incoming.host
    port = settings.incoming.port if port is None else port
    loop = new_loop()
    public = sorted(
        h.handler.id for h in settings.handlers if h.verify is not None and h.verify.type == "none"
    )
    if public:
        logging.getLogger("clawdbot_webhooks").warning(
            "public handlers (verify: none, anyone may post to them): %s", ", ".join(public)
        )
    from clawdbot_webhooks.store import StoreUnavailable

    try:
        runtime = Runtime(settings, plugins, redactor)
    except GatewayError as exc:
        click.echo(f"Error: gateway {settings.gateway.type!r}: {exc}", err=True)
        sys.exit(2)
    sources = getattr(runtime.gateway, "sources", None)
    if sources:
        where = "; ".join(f"{key} from {origin}" for key, origin in sources.items())
        logging.getLogger("clawdbot_webhooks").info("gateway %s: %s", settings.gateway.type, where)
    try:
        run(runtime, host, port, loop)
    except StoreUnavailable as exc:
        # One line, which URL (password redacted) and why: the store says both.
        click.echo(f"Error: storage unavailable: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        # The listener could not bind: a port in use is the usual first-day mistake.
        reason = os.strerror(exc.errno)
        click.echo(f"Error: cannot listen on {host}:{port}: {reason} (try --port)", err=True)
        sys.exit(1)


@main.command()
@config_option
@click.option("--probe", is_flag=True, help="Also connect to the configured gateway.")
def check(config_path: str | None, probe: bool) -> None:
    """Validate the config, compile its templates and check its plugins."""
    path = find_config(config_path)
    settings, plugins = load_or_exit(config_path)
    click.echo(f"Config OK: {path or '(built-in defaults)'}")
    click.echo(
        f"  handlers: {len(settings.handlers)}, outgoing: {len(settings.outgoing)}, "
        f"gateway: {settings.gateway.type}, storage: {redact_url(settings.storage.url)}"
    )
    off = [i for i in plugins.infos.values() if not i.enabled]
    for info in off:
        click.echo(f"  plugin {info.name}: {info.reason}")
    if probe:
        from clawdbot_webhooks.runtime import make_gateway

        async def run_probe() -> str:
            # Events a probe might see have nowhere to go: there is no bus without a server.
            gateway = make_gateway(settings, plugins, lambda event: None)
            try:
                return await gateway.probe()
            finally:
                await gateway.close()

        try:
            click.echo(f"Gateway OK: {asyncio.run(run_probe())}")
        except Exception as exc:
            click.echo(f"Gateway probe failed: {exc}", err=True)
            sys.exit(1)


@main.command()
@config_option
@json_option
@click.option("--all", "show_all", is_flag=True, help="Include the hooks each plugin implements.")
def plugins(config_path: str | None, as_json: bool, show_all: bool) -> None:
    """List plugins: name, distribution, version, what each registers, enabled or not."""
    from clawdbot_webhooks.config import selection_of

    try:
        plugin_set = load_plugins(selection_of(find_config(config_path)))
        plugin_set.describe_off()  # what the switched-off ones would register, for the list
    except (ConfigError, PluginError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    infos = sorted(plugin_set.infos.values(), key=lambda i: (not i.builtin, i.name))
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    rows = [("NAME", "DISTRIBUTION", "VERSION", "STATE", "REGISTERS")]
    for info in infos:
        registers = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registers.items()))
        if show_all and info.hooks:
            registers += f" [hooks: {', '.join(info.hooks)}]"
        state = "enabled" if info.enabled else f"disabled ({info.reason})"
        rows.append(
            (info.name, info.distribution or "-", info.version or "-", state, registers or "-")
        )
    print_table(rows)


# Subcommand groups that live in their own modules (they import the helpers above).
from clawdbot_webhooks.cli.db import db  # noqa: E402
from clawdbot_webhooks.cli.dlq import dlq  # noqa: E402

main.add_command(dlq)
from clawdbot_webhooks.cli.chain import show  # noqa: E402
from clawdbot_webhooks.cli.ops import deliveries, send_test  # noqa: E402

deliveries.add_command(show)
main.add_command(deliveries)
main.add_command(send_test)
main.add_command(db)
from clawdbot_webhooks.cli.init import init  # noqa: E402

main.add_command(init)


if __name__ == "__main__":  # pragma: no cover
    main()

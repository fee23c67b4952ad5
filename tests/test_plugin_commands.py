"""``register_commands(cli)``: a plugin adds a subcommand to ``clawdbot-webhooks``; the built-in
local gateway adds ``messages`` that way, so it goes when that plugin is switched off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main

WHERE = """
import click
from clawdbot_webhooks_hookspecs import CommandEnv, hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    @click.option("--config", "config_path", default=None)
    def where(config_path):
        '''Where this plugin keeps its files.'''
        env = click.get_current_context().find_object(CommandEnv)
        click.echo(f"{env.state_dir(config_path)} {dict(env.settings(config_path, 'where'))}")
"""


def write(tmp_path: Path, webhooks: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"webhooks": {"stateDir": str(tmp_path / "st"), **webhooks}}))
    return path


def test_a_plugin_adds_a_command(
    fake_distribution, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution("clawdbot-webhooks-where", "0.1", "cw_where", WHERE, entry="where")
    config = write(tmp_path, {"plugins": {"settings": {"where": {"colour": "blue"}}}})
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_CONFIG", str(config))
    listing = CliRunner().invoke(main, ["--help"])
    assert "where" in listing.output and "messages" in listing.output
    result = CliRunner().invoke(main, ["where", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{tmp_path / 'st'} {{'colour': 'blue'}}\n"
    # A wrong config is reported by the command the way every command reports it.
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"webhooks": {"incoming": {"port": "many"}}}))
    result = CliRunner().invoke(main, ["where", "--config", str(broken)])
    assert result.exit_code == 2 and "webhooks.incoming.port" in result.output
    # Switched off in the default config, its command is gone.
    write(tmp_path, {"plugins": {"disabled": ["where"]}})
    result = CliRunner().invoke(main, ["where"])
    assert result.exit_code == 2 and "No such command 'where'" in result.output


def test_messages_belongs_to_the_local_gateway_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, {})
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_CONFIG", str(config))
    result = CliRunner().invoke(main, ["messages"])
    assert (result.exit_code, result.output) == (0, "No messages yet.\n")
    result = CliRunner().invoke(main, ["messages", "--json"])
    assert (result.exit_code, json.loads(result.output)) == (0, [])
    write(
        tmp_path,
        {
            "plugins": {"disabled": ["local-gateway"]},
            "gateway": {"type": "clawdbot-http", "token": "t"},
        },
    )
    result = CliRunner().invoke(main, ["messages"])
    assert result.exit_code == 2 and "No such command 'messages'" in result.output


def test_messages_works_without_the_secrets_the_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the README says: the commands that only read work without the secrets exported,
    also when the config is found by itself rather than named."""
    config = write(tmp_path, {"incoming": {"secret": "${NOT_SET_ANYWHERE}"}})
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_CONFIG", str(config))
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    result = CliRunner().invoke(main, ["messages"])
    assert (result.exit_code, result.output) == (0, "No messages yet.\n")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0 and "local-gateway" in result.output
    # the plugin switches are still read from that file
    write(
        tmp_path,
        {
            "incoming": {"secret": "${NOT_SET_ANYWHERE}"},
            "plugins": {"disabled": ["local-gateway"]},
            "gateway": {"type": "clawdbot-http", "token": "t"},
        },
    )
    assert "No such command 'messages'" in CliRunner().invoke(main, ["messages"]).output

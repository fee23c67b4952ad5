"""Subcommands that plugins add through ``register_commands(cli)``.

They are looked up only when a name is not one of the runtime's own commands or when the
commands are listed (``--help``), so the runtime's commands never wait for the plugins. Which
plugins are on comes from the default config file (``--config`` belongs to each subcommand and
is not known yet); a config or plugin that cannot load adds no commands here, and the command
that runs reports the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from clawdbot_webhooks_hookspecs import CommandEnv

from clawdbot_webhooks.cli.support import load_or_exit
from clawdbot_webhooks.config import ConfigError, find_config, selection_of
from clawdbot_webhooks.plugins import PluginError, load_plugins
from clawdbot_webhooks.plugins.calls import HookCalls, result_of


def command_env() -> CommandEnv:
    def state_dir(config_path: str | None) -> str:
        # Only where the state is: a secret the config names need not be set for this.
        settings, _ = load_or_exit(config_path, store_only=True)
        return str(settings.state_dir)

    def settings(config_path: str | None, plugin: str) -> Mapping[str, Any]:
        loaded, _ = load_or_exit(config_path)
        return dict(loaded.plugins.settings.get(plugin, {}))

    return CommandEnv(state_dir=state_dir, settings=settings)


class PluginCommandsGroup(click.Group):
    """A click group that adds the plugins' commands the first time it needs them."""

    _plugins_added = False
    _plugin_commands: frozenset[str] = frozenset()

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # Each invocation sees the plugins installed and switched on now (one process may
        # run the command more than once, as tests do).
        for name in self._plugin_commands:
            self.commands.pop(name, None)
        self._plugins_added, self._plugin_commands = False, frozenset()
        return super().make_context(info_name, args, parent, **extra)

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        before = set(self.commands)
        try:
            self._call_plugins()
        finally:
            self._plugin_commands = frozenset(set(self.commands) - before)

    def _call_plugins(self) -> None:
        try:
            plugin_set = load_plugins(selection_of(find_config(None)))
        except (ConfigError, PluginError, OSError):
            return
        calls = HookCalls(plugin_set.pm, "register_commands")
        for plugin, caller in calls.each:
            try:
                result_of(caller, {"cli": self})
            except Exception as exc:
                click.echo(
                    f"Plugin error: plugin {plugin!r} failed in register_commands: {exc!r}",
                    err=True,
                )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

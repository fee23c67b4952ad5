"""Finding the config file, reading its ``webhooks`` object (JSON5, ``${VAR}``), and loading
the plugins it selects before building the settings."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import json5

from clawdbot_webhooks.config.build import build_settings
from clawdbot_webhooks.config.errors import ConfigError
from clawdbot_webhooks.config.model import Settings
from clawdbot_webhooks.config.paths import clawdbots_own, find_config
from clawdbot_webhooks.plugins import PluginSelection, PluginSet, load_plugins

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: What commands that only read the store need of the file: nothing else is substituted or
#: checked for them, so a secret they do not use may be missing from their environment.
STORE_KEYS = ("storage", "stateDir", "plugins")


class ClawdbotsOwnFile(ConfigError):
    """Given Clawdbot's own config file instead of ours."""


def read_raw(path: Path | None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``webhooks`` object of a JSON5 file, with ``${VAR}`` substituted; with ``only``,
    just those keys of it."""
    raw, missing = read_raw_lenient(path, only)
    if missing:
        raise ConfigError(missing)
    return raw


def read_raw_lenient(
    path: Path | None, only: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``read_raw``, with a variable that is not set read as empty and named in the errors
    returned beside the section: the rest of the file is still checked, so one run of
    ``check`` shows every mistake."""
    if path is None:
        return {}, []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from exc
    try:
        # Plain JSON is valid JSON5 and the C parser reads it a hundred times faster than
        # the json5 library, which matters for generated configs with thousands of handlers.
        document = json.loads(text)
    except ValueError:
        try:
            document = json5.loads(text)
        except ValueError as exc:
            raise ConfigError([f"{path}: not valid JSON5: {exc}"]) from exc
    if not isinstance(document, dict):
        raise ConfigError([f"{path}: the top level must be an object"])
    why = clawdbots_own(path, document)
    if why is not None:
        raise ClawdbotsOwnFile([why], str(path))
    section = document.get("webhooks")
    if section is None:
        raise ConfigError(
            [
                "webhooks: missing (only the 'webhooks' key of the file is read: put the "
                "settings inside { webhooks: { ... } })"
            ]
        )
    if not isinstance(section, dict):
        raise ConfigError(["webhooks: must be an object"])
    if only is not None:
        section = {k: v for k, v in section.items() if k in only}
    errors: list[str] = []
    substituted: dict[str, Any] = _substitute(section, "webhooks", errors)
    return substituted, errors


def _substitute(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in os.environ:
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return os.environ[name]

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}", errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def selection_of(path: Path | None) -> PluginSelection:
    """The plugin switches of the config file at ``path`` (the defaults without one), read
    on their own: the commands that only read (``messages``, ``plugins``) work without the
    secrets the rest of the file names."""
    if path is None:
        return PluginSelection.from_config()
    return plugin_selection(read_raw_lenient(path, only=("plugins",))[0])


def plugin_selection(raw: Mapping[str, Any]) -> PluginSelection:
    """Read just the plugin switches, before the plugins the rest of the config needs load."""
    section = raw.get("plugins") or {}
    disabled = section.get("disabled") or [] if isinstance(section, dict) else []
    enabled = section.get("enabled") if isinstance(section, dict) else None
    return PluginSelection.from_config(
        [str(n) for n in disabled] if isinstance(disabled, list) else [],
        [str(n) for n in enabled] if isinstance(enabled, list) else None,
    )


def load_settings(
    config: str | None, plugins_for: Any = None, only: Sequence[str] | None = None
) -> tuple[Settings, PluginSet]:
    """Find, read and validate the config, loading the plugins it selects; with ``only``,
    just those keys (``STORE_KEYS``: what reading the store takes), the rest as defaults."""
    path = find_config(config)
    raw, missing = read_raw_lenient(path, only)
    extra = plugins_for or ()
    plugin_set = load_plugins(plugin_selection(raw), extra)
    source = str(path) if path else None
    try:
        settings = build_settings(raw, plugin_set, source)
    except ConfigError as exc:
        raise ConfigError([*missing, *exc.errors], source) from exc
    if missing:
        raise ConfigError(missing, source)
    return settings, plugin_set

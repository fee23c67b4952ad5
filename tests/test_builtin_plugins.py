"""The built-ins are one plugin per action, transport and gateway, entry points of the
``clawdbot-webhooks`` distribution, each switched off by its own name; a name in
``plugins.disabled`` or ``plugins.enabled`` that matches no plugin is a config error."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.plugins import PluginError, PluginSelection, load_plugins

CUSTOM = {"id": "c", "action": "custom", "function": "json:dumps"}


def write(tmp_path: Path, webhooks: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"webhooks": {"stateDir": str(tmp_path / "st"), **webhooks}}))
    return str(path)


def test_builtins_are_entry_points_of_the_runtime_distribution() -> None:
    own = {
        ep.name: ep.value
        for ep in metadata.entry_points(group="clawdbot_webhooks")
        if ep.dist is not None and ep.dist.name == "clawdbot-webhooks"
    }
    assert own["custom-action"] == "clawdbot_webhooks.builtin.actions:custom_plugin"
    assert own["local-gateway"] == "clawdbot_webhooks.builtin.local_gateway"
    loaded = load_plugins()
    assert {name for name, info in loaded.infos.items() if info.builtin} == set(own)


async def test_switching_off_custom_leaves_the_other_actions(
    start_server, make_sink, tmp_path: Path
) -> None:
    sink = await make_sink()
    handlers = [
        {"id": "f", "action": "forward", "url": sink.url},
        {
            "id": "m",
            "action": "send_message",
            "template": "hi",
            "target": {"channel": "c", "peer": "p"},
        },
    ]
    off = {"disabled": ["custom-action"]}
    srv = await start_server({"handlers": handlers, "plugins": off})
    assert "custom" not in srv.runtime.plugins.registries.actions
    for hook in ("f", "m"):
        status, _ = await srv.post(hook, {"n": 1})
        assert status == 202
    await srv.idle()
    assert [json.loads(r["body"]) for r in sink.received] == [{"n": 1}]
    assert [m["text"] for m in srv.messages()] == ["hi"]

    # A handler that still uses custom fails check, naming the plugin and why it is off.
    config = write(tmp_path, {"handlers": [CUSTOM], "plugins": off})
    result = CliRunner().invoke(main, ["check", "--config", config])
    assert result.exit_code == 2
    assert (
        "webhooks.handlers[0].action: action 'custom' is provided by plugin 'custom-action', "
        "which is disabled in webhooks.plugins.disabled"
    ) in result.output


@pytest.mark.parametrize("key", ["disabled", "enabled"])
def test_a_misspelt_plugin_name_fails_check(key: str, tmp_path: Path) -> None:
    config = write(tmp_path, {"plugins": {key: ["forward"]}})
    for command in ("check", "serve", "plugins"):
        result = CliRunner().invoke(main, [command, "--config", config])
        assert result.exit_code == 2, result.output
        [line] = result.output.splitlines()
        assert f"webhooks.plugins.{key}: no plugin is named 'forward'; the plugins are: " in line
        assert "custom-action, forward-action, http-transport" in line
        assert "Traceback" not in result.output


def test_unknown_names_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_LOAD_PLUGINS", "githb")
    with pytest.raises(
        PluginError, match=r"^CLAWDBOT_WEBHOOKS_LOAD_PLUGINS: no plugin is named 'githb'"
    ):
        load_plugins(PluginSelection.from_config())

"""Config loading: JSON5, ${VAR}, key-path errors gathered all at once, the search order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.config import ConfigError, build_settings, find_config, load_settings
from clawdbot_webhooks.plugins import load_plugins

FIVE_MISTAKES = """
// only `webhooks` is read
{
  notes: "anything else in the file is left alone",
  webhooks: {
    incoming: { port: "not-a-port", allowedIPs: ["10.0.0.0/8", "not-an-ip"], secret: "s" },
    handlers: [
      { id: "ok", action: "send_message", target: { channel: "c", peer: "p" }, template: "x" },
      { id: "agent", action: "run_agent", template: "hi" },                    // no agentId
      { id: "t", action: "send_message", target: { channel: "c", peer: "p" }, template: "{{ a" },
      { id: "what", action: "teleport" },
    ],
  },
}
"""


def test_five_mistakes_are_all_reported_with_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.json5"
    path.write_text(FIVE_MISTAKES)
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2
    lines = [line.strip() for line in result.output.splitlines() if line.startswith("  ")]
    assert lines == [
        "webhooks.incoming.port: Not a valid integer.",
        "webhooks.incoming.allowedIPs[1]: not an IP address or network: 'not-an-ip'",
        "webhooks.handlers[1].agentId: Missing data for required field.",
        "webhooks.handlers[2].template: template syntax error on line 1: unexpected end of "
        "template, expected 'end of print statement'.",
        "webhooks.handlers[3].action: unknown action 'teleport' (known: custom, forward, "
        "run_agent, send_message, wake)",
    ]


def test_a_template_error_is_reported_beside_other_option_errors() -> None:
    from clawdbot_webhooks.config import build_settings
    from clawdbot_webhooks.plugins import load_plugins

    raw = {
        "handlers": [
            {
                "id": "t",
                "action": "send_message",
                "target": {"channel": "c"},
                "template": "{{ a",
                "secret": "s",
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        build_settings(raw, load_plugins(), None)
    assert [e.split(":")[0] for e in caught.value.errors] == [
        "webhooks.handlers[0].target.peer",
        "webhooks.handlers[0].template",
    ]


def test_template_errors_are_reported_with_the_others(tmp_path: Path) -> None:
    path = tmp_path / "c.json5"
    path.write_text(
        json.dumps(
            {
                "webhooks": {
                    "handlers": [
                        {"id": "a", "action": "run_agent", "agentId": "x", "template": "{{ a"},
                        {
                            "id": "b",
                            "action": "run_agent",
                            "agentId": "x",
                            "template": "ok",
                            "sessionMode": "persistent",
                        },
                        {"id": "a", "action": "run_agent", "agentId": "x", "template": "dup id"},
                    ]
                }
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    errors = caught.value.errors
    assert errors[0].startswith("webhooks.handlers[0].template: template syntax error on line 1")
    assert "webhooks.handlers[1].sessionKey: required when sessionMode is 'persistent'" in errors
    assert "webhooks.handlers[2].id: duplicate handler id 'a' (also handlers[0])" in errors


def test_env_substitution_and_missing_variable(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.json5"
    path.write_text(
        '{webhooks: {incoming: {secret: "${HOOK_SECRET}", '
        'secretHeader: "X-${HEADER_PART}"}, stateDir: "$${literal}"}}'
    )
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    monkeypatch.delenv("HEADER_PART", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert caught.value.errors == [
        "webhooks.incoming.secretHeader: environment variable HEADER_PART is not set"
    ]
    monkeypatch.setenv("HEADER_PART", "Token")
    settings, _ = load_settings(str(path))
    assert settings.incoming.secret == "from-env"
    assert settings.incoming.secret_header == "X-Token"
    assert settings.state_dir == (tmp_path / "${literal}").resolve()


def test_unknown_keys_and_bad_json5(tmp_path: Path) -> None:
    path = tmp_path / "c.json5"
    path.write_text(
        '{webhooks: {incomming: {}, handlers: [{id: "a", action: "run_agent", '
        'agentId: "x", template: "t", agentid: "typo", secret: "s"}]}}'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert caught.value.errors == [
        "webhooks.incomming: Unknown field.",
        "webhooks.handlers[0].agentid: Unknown field.",
    ]
    path.write_text("{webhooks: {")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert "not valid JSON5" in caught.value.errors[0]
    path.write_text("{other: {}}")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert caught.value.errors[0].startswith("webhooks: missing")


def test_search_order(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for var in ("CLAWDBOT_WEBHOOKS_CONFIG", "CLAWDBOT_STATE_DIR", "OPENCLAW_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert find_config(None) is None
    # Clawdbot's own files are never ours, wherever they are.
    for own in (home / ".clawdbot" / "clawdbot.json", home / ".openclaw" / "openclaw.json"):
        own.parent.mkdir(parents=True)
        own.write_text("{gateway: {port: 18789}}")
    assert find_config(None) is None
    openclaw = home / ".openclaw" / "webhooks.json5"
    openclaw.write_text("{webhooks: {}}")
    assert find_config(None) == openclaw
    clawdbot = home / ".clawdbot" / "webhooks.json5"
    clawdbot.write_text("{webhooks: {}}")
    assert find_config(None) == clawdbot
    state = tmp_path / "state"
    state.mkdir()
    (state / "webhooks.json5").write_text("{webhooks: {}}")
    monkeypatch.setenv("CLAWDBOT_STATE_DIR", str(state))
    assert find_config(None) == state / "webhooks.json5"
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_CONFIG", str(tmp_path / "env.json5"))
    assert find_config(None) == tmp_path / "env.json5"
    assert find_config(str(tmp_path / "explicit.json5")) == tmp_path / "explicit.json5"


@pytest.mark.parametrize(
    "name, text",
    [
        ("clawdbot.json", "{gateway: {port: 18789}, webhooks: {}}"),
        ("openclaw.json", "{}"),
        ("my-clawdbot.json5", '{agents: {list: []}, gateway: {mode: "local"}}'),
    ],
)
def test_clawdbots_own_file_is_refused_in_one_line(
    tmp_path: Path, monkeypatch, name: str, text: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CLAWDBOT_STATE_DIR", raising=False)
    path = tmp_path / name
    path.write_text(text)
    for command in (["check"], ["serve"], ["dlq", "list"]):
        result = CliRunner().invoke(main, [*command, "--config", str(path)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output
        assert lines[0].startswith(f"Error: {path} is Clawdbot's own config")
        assert f"ours belongs in {tmp_path / '.clawdbot' / 'webhooks.json5'}" in lines[0]
    assert path.read_text() == text


def test_our_settings_without_their_wrapper_are_called_that_not_clawdbots_file(
    tmp_path: Path,
) -> None:
    """A file of our settings that lacks the ``webhooks`` key, with a ``gateway`` among them
    (a key Clawdbot's file has too), is told what it lacks, not sent to where it already is."""
    path = tmp_path / "webhooks.json5"
    path.write_text('{incoming: {port: 3011}, handlers: [], gateway: {type: "local"}}')
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert "webhooks: missing" in result.output and "{ webhooks: { ... } }" in result.output
    assert "Clawdbot's own config" not in result.output


def test_a_gateway_without_options_names_every_option_given_as_unknown() -> None:
    """``local`` takes no options: a misspelt ``type`` (``typ``) left the gateway local and
    dropped the url and token without a word."""
    raw = {"gateway": {"typ": "clawdbot", "url": "ws://127.0.0.1:18789", "token": "t0k3n"}}
    with pytest.raises(ConfigError) as caught:
        build_settings(raw, load_plugins(), None)
    assert sorted(caught.value.errors) == [
        "webhooks.gateway.token: Unknown field.",
        "webhooks.gateway.typ: Unknown field.",
        "webhooks.gateway.url: Unknown field.",
    ]


def test_init_refuses_a_port_that_check_would(tmp_path: Path) -> None:
    path = tmp_path / "p.json5"
    result = CliRunner().invoke(main, ["init", "--config", str(path), "--port", "70000"])
    assert result.exit_code == 2 and "70000" in result.output
    assert not path.exists()


def test_read_only_commands_do_not_need_the_secrets_they_do_not_use(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("NOT_EXPORTED_HERE", raising=False)
    path = tmp_path / "webhooks.json5"
    path.write_text(
        '{webhooks: {stateDir: "state", incoming: {secret: "${NOT_EXPORTED_HERE}"},'
        ' handlers: [{id: "h", action: "run_agent", agentId: "a", template: "x",'
        ' verify: {type: "github", secret: "${NOT_EXPORTED_HERE}"}}]}}'
    )
    for command in (["messages"], ["dlq", "list"], ["deliveries", "list"], ["db", "status"]):
        result = CliRunner().invoke(main, [*command, "--config", str(path)])
        assert result.exit_code == 0, (command, result.output)
    # `deliveries show` uses the handlers' config where it loads, and says when it does not
    result = CliRunner().invoke(main, ["deliveries", "show", "dlv_none", "--config", str(path)])
    assert result.exit_code == 1 and "no incoming or outgoing delivery 'dlv_none'" in result.output
    assert "NOT_EXPORTED_HERE is not set" in result.output
    # What does use them still says which is missing.
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert "webhooks.incoming.secret: environment variable NOT_EXPORTED_HERE is not set" in (
        result.output
    )


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "c.json5"
    path.parent.mkdir()
    path.write_text('{webhooks: {stateDir: "data", storage: {url: "sqlite:///db/x.sqlite3"}}}')
    settings, _ = load_settings(str(path))
    assert settings.state_dir == tmp_path / "conf" / "data"
    assert settings.storage.url == f"sqlite:///{tmp_path / 'conf' / 'db' / 'x.sqlite3'}"


def test_check_passes_on_the_example_config(monkeypatch) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "quickstart.json5"
    monkeypatch.setenv("WEBHOOK_SECRET", "my-secret")
    monkeypatch.setenv("GH_SECRET", "gh-secret")
    result = CliRunner().invoke(main, ["check", "--config", str(example)])
    assert result.exit_code == 0, result.output
    assert "Config OK" in result.output

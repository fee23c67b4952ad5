"""``clawdbot-webhooks init``: a starter config at the default path with fresh secrets, the
gateway discovered when Clawdbot is there, never overwriting without ``--force`` and never
touching Clawdbot's own file."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import json5
import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.config import load_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in (
        "CLAWDBOT_WEBHOOKS_CONFIG",
        "CLAWDBOT_CONFIG_PATH",
        "CLAWDBOT_STATE_DIR",
        "OPENCLAW_CONFIG_PATH",
        "OPENCLAW_STATE_DIR",
        "CLAWDBOT_CLI",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _clawdbot_json(home: Path) -> Path:
    path = home / ".clawdbot" / "clawdbot.json"
    path.parent.mkdir(parents=True)
    path.write_text('{gateway: {port: 19001, auth: {token: "gw-token"}}}\n')
    return path


def test_writes_a_private_valid_starter_with_fresh_secrets(home: Path) -> None:
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    path = home / ".clawdbot" / "webhooks.json5"
    assert f"Wrote {path}" in result.output
    assert "clawdbot-webhooks serve" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings, _ = load_settings(str(path))
    assert settings.gateway.type == "local"  # no Clawdbot here
    assert [h.handler.id for h in settings.handlers] == ["hello"]
    first = json5.loads(path.read_text())["webhooks"]
    assert len(first["incoming"]["secret"]) >= 40 and len(first["admin"]["token"]) >= 40

    again = CliRunner().invoke(main, ["init", "--force"])
    assert again.exit_code == 0, again.output
    second = json5.loads(path.read_text())["webhooks"]
    assert second["incoming"]["secret"] != first["incoming"]["secret"]
    assert second["admin"]["token"] != first["admin"]["token"]


def test_refuses_to_overwrite_without_force(home: Path) -> None:
    path = home / ".clawdbot" / "webhooks.json5"
    path.parent.mkdir(parents=True)
    path.write_text("{webhooks: {}} // mine\n")
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 1
    assert "exists; not overwritten (use --force" in result.output
    assert path.read_text() == "{webhooks: {}} // mine\n"


def test_beside_clawdbot_the_gateway_is_discovered_and_its_file_untouched(home: Path) -> None:
    clawdbot = _clawdbot_json(home)
    before = clawdbot.read_bytes()
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    assert f"gateway: clawdbot (URL and token read from {clawdbot} at each start" in result.output
    assert "gw-token" not in result.output
    written = home / ".clawdbot" / "webhooks.json5"
    settings, _ = load_settings(str(written))
    assert settings.gateway.type == "clawdbot"
    assert "url" not in json5.loads(written.read_text())["webhooks"]["gateway"]
    assert clawdbot.read_bytes() == before


def test_openclaw_and_state_dir_decide_where_it_goes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / ".openclaw").mkdir()
    (home / ".openclaw" / "openclaw.json").write_text("{}")
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    assert (home / ".openclaw" / "webhooks.json5").is_file()
    monkeypatch.setenv("CLAWDBOT_STATE_DIR", str(home / "state"))
    (home / "state").mkdir()
    (home / "state" / "clawdbot.json").write_text("{}")
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    assert (home / "state" / "webhooks.json5").is_file()


def test_never_writes_clawdbots_own_file(home: Path) -> None:
    clawdbot = _clawdbot_json(home)
    before = clawdbot.read_bytes()
    result = CliRunner().invoke(main, ["init", "--force", "--config", str(clawdbot)])
    assert result.exit_code == 2
    assert "Clawdbot's own config" in result.output
    assert clawdbot.read_bytes() == before


def test_bridge_needs_clawdbots_cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(home))  # no clawdbot on it
    result = CliRunner().invoke(main, ["init", "--bridge"])
    assert result.exit_code == 1
    assert "needs Clawdbot's CLI" in result.output
    assert not (home / ".clawdbot" / "webhooks.json5").exists()


def test_bridge_runs_clawdbots_cli_and_a_failure_stops_it(home: Path) -> None:
    # A stand-in for Clawdbot's CLI that records its arguments (the real one is driven in
    # tests/integration); it fails the `config set`, as Clawdbot does on an invalid value.
    calls = home / "calls"
    cli = home / "fake-clawdbot"
    cli.write_text(
        f"import sys\nopen({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "sys.exit(3 if sys.argv[1] == 'config' else 0)\n"
    )
    result = CliRunner().invoke(main, ["init", "--bridge", "--clawdbot", f"{sys.executable} {cli}"])
    assert result.exit_code == 1
    assert "configuring the event bridge failed (exit 3)" in result.output
    install, config_set = calls.read_text().splitlines()
    assert install.startswith("plugins install ") and install.endswith("clawdbot-event-bridge")
    token = json5.loads((home / ".clawdbot" / "webhooks.json5").read_text())["webhooks"][
        "incoming"
    ]["eventIngress"]["token"]
    assert config_set.startswith("config set plugins.entries.clawdbot-event-bridge.config ")
    assert token in config_set and "http://127.0.0.1:3011/events/ingest" in config_set

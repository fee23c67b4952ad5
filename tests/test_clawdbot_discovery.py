"""Gateway discovery: the ``clawdbot`` and ``clawdbot-http`` gateways, left without a URL or
token, read them from Clawdbot's own config file, read-only, with ``${VAR}`` resolved as
Clawdbot resolves it, and say where each came from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from clawdbot_webhooks_hookspecs import GatewayEnv, GatewayError
from marshmallow import ValidationError

from clawdbot_webhooks.builtin.clawdbot.gateway import ClawdbotGateway
from clawdbot_webhooks.builtin.clawdbot.http_gateway import (
    ClawdbotHttpGateway,
    ClawdbotHttpGatewaySchema,
)
from clawdbot_webhooks.builtin.clawdbot_config import (
    ClawdbotConfigError,
    find_clawdbot_config,
    substitute,
)

CLAWDBOT_JSON = """// Clawdbot's own file, JSON5 as it writes it
{
  gateway: {
    mode: "local",
    bind: "loopback",
    port: 19555,
    auth: { mode: "token", token: "${GW_TOKEN}" },
  },
  hooks: { enabled: true, path: "/in/", token: "hooks-secret" },
  models: { providers: { x: { apiKey: "${NOT_NEEDED_BY_US}" } } },
}
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in (
        "CLAWDBOT_CONFIG_PATH",
        "CLAWDBOT_STATE_DIR",
        "OPENCLAW_CONFIG_PATH",
        "OPENCLAW_STATE_DIR",
        "CLAWDBOT_GATEWAY_PORT",
        "CLAWDBOT_GATEWAY_TOKEN",
        "NOT_NEEDED_BY_US",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GW_TOKEN", "token-from-env")
    return tmp_path


def _env(tmp_path: Path) -> GatewayEnv:
    return GatewayEnv(str(tmp_path), lambda e: None, logging.getLogger("test"))


def _write(path: Path, text: str = CLAWDBOT_JSON) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_ws_gateway_reads_port_and_token_from_clawdbots_file(home: Path) -> None:
    config = _write(home / ".clawdbot" / "clawdbot.json")
    before = config.read_bytes()
    gateway = ClawdbotGateway({}, _env(home))
    assert gateway.url == "ws://127.0.0.1:19555"
    assert gateway.options["token"] == "token-from-env"
    assert gateway.sources == {
        "url": f"{config} gateway.bind, {config} gateway.port",
        "token": f"{config} gateway.auth.token",
    }
    assert config.read_bytes() == before


def test_given_values_win_and_say_so(home: Path) -> None:
    _write(home / ".clawdbot" / "clawdbot.json")
    gateway = ClawdbotGateway({"url": "ws://10.0.0.5:1", "token": "t"}, _env(home))
    assert (gateway.url, gateway.options["token"]) == ("ws://10.0.0.5:1", "t")
    assert gateway.sources == {"url": "webhooks config", "token": "webhooks config"}


def test_without_clawdbot_the_defaults_apply(home: Path) -> None:
    gateway = ClawdbotGateway({}, _env(home))
    assert gateway.url == "ws://127.0.0.1:18789"
    assert gateway.options["token"] is None
    assert gateway.sources == {"url": "built-in default"}


def test_environment_overrides_as_clawdbot_reads_them(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        home / ".clawdbot" / "clawdbot.json", "{gateway: {bind: 'custom', customBindHost: '::1'}}"
    )
    monkeypatch.setenv("CLAWDBOT_GATEWAY_PORT", "20001")
    monkeypatch.setenv("CLAWDBOT_GATEWAY_TOKEN", "env-token")
    gateway = ClawdbotGateway({}, _env(home))
    assert gateway.url == "ws://[::1]:20001"
    assert gateway.sources["token"] == "$CLAWDBOT_GATEWAY_TOKEN"
    assert "$CLAWDBOT_GATEWAY_PORT" in gateway.sources["url"]


def test_a_missing_variable_we_need_is_a_clear_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(home / ".clawdbot" / "clawdbot.json")
    monkeypatch.delenv("GW_TOKEN")
    with pytest.raises(GatewayError, match=r"GW_TOKEN .*gateway\.auth\.token.* is not set"):
        ClawdbotGateway({}, _env(home))
    # Given a token, the file's unresolvable one is never read.
    assert ClawdbotGateway({"token": "t"}, _env(home)).url == "ws://127.0.0.1:19555"


def test_search_order_and_state_dirs(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_clawdbot_config() is None
    openclaw = _write(home / ".openclaw" / "openclaw.json")
    assert find_clawdbot_config() == openclaw
    clawdbot = _write(home / ".clawdbot" / "clawdbot.json")
    assert find_clawdbot_config() == clawdbot
    elsewhere = _write(home / "state" / "clawdbot.json")
    monkeypatch.setenv("CLAWDBOT_STATE_DIR", str(home / "state"))
    assert find_clawdbot_config() == elsewhere
    explicit = _write(home / "etc" / "cb.json5")
    monkeypatch.setenv("CLAWDBOT_CONFIG_PATH", str(explicit))
    assert find_clawdbot_config() == explicit


def test_substitution_follows_clawdbots_rules() -> None:
    env = {"A": "x", "EMPTY": "", "lower": "y"}
    assert substitute("${A}-$${A}-${lower}-$5-${", env, "k") == "x-${A}-${lower}-$5-${"
    with pytest.raises(ClawdbotConfigError, match="EMPTY"):
        substitute("${EMPTY}", env, "k")


def test_http_gateway_reads_hooks_path_and_token(home: Path) -> None:
    config = _write(home / ".clawdbot" / "clawdbot.json")
    gateway = ClawdbotHttpGateway(ClawdbotHttpGatewaySchema().load({}), _env(home))
    assert gateway.base == "http://127.0.0.1:19555/in"
    assert gateway.options["token"] == "hooks-secret"
    assert gateway.sources["token"] == f"{config} hooks.token"


def test_http_gateway_without_any_token_is_refused_when_loaded(home: Path) -> None:
    with pytest.raises(ValidationError, match=r"hooks\.token"):
        ClawdbotHttpGatewaySchema().load({})

"""Agent runs with options (reply delivery, thinking, timeout, label) and the wake action,
through the real server: the local gateway, a plugin gateway and the clawdbot-http gateway
against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import AgentReply, ReplyTarget, hookimpl
from click.testing import CliRunner

from clawdbot_webhooks.builtin.local_gateway import LocalGateway, read_log
from clawdbot_webhooks.cli import main
from clawdbot_webhooks.config import ConfigError, load_settings
from clawdbot_webhooks.web.admin.api import replay

TWO_TRIES = {"maxAttempts": 2, "initialDelay": 0.01, "jitter": False}
#: These tests are about how run options travel: the text goes as rendered (the boundary
#: around payload text has tests of its own, in test_untrusted.py).
RAW = {"allowUnsafeExternalContent": True}


def _of(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in log if m["kind"] == kind]


async def test_reply_is_delivered_to_the_configured_chat_with_every_option(
    start_server, recorder
) -> None:
    config = {
        "handlers": [
            {
                "id": "pr",
                "action": "run_agent",
                "agentId": "devops",
                "template": "summarise PR {{ number }}",
                "deliver": {
                    "channel": "slack",
                    "to": "#dev",
                    "threadId": "1700000000.0001",
                    "accountId": "work",
                },
                "thinking": "low",
                "timeout": 120,
                "label": "pr-summaries",
            }
        ]
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    status, body = await srv.post("pr", {"number": 7})
    assert status == 202
    await srv.idle()
    log = read_log(srv.runtime.settings.state_dir)
    [prompt] = _of(log, "prompt")
    assert json.loads(prompt["options"]) == {
        "deliver": {
            "channel": "slack",
            "to": "#dev",
            "threadId": "1700000000.0001",
            "accountId": "work",
        },
        "thinking": "low",
        "timeout": 120,
        "label": "pr-summaries",
    }
    [reply] = _of(log, "reply")
    [sent] = _of(log, "sent")
    assert (sent["channel"], sent["peer"], sent["text"]) == ("slack", "#dev", reply["text"])
    assert sent["text"] == "[devops #1] summarise PR 7"
    assert json.loads(sent["options"]) == {"threadId": "1700000000.0001", "accountId": "work"}
    assert sent["idempotency_key"] == body["id"] and sent["session"] == body["session"]
    # The reply is still an event for subscribers, once.
    [response] = recorder.of("agent_response")
    assert response.data["text"] == reply["text"]
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "done"


async def test_without_options_nothing_is_delivered_or_recorded(start_server) -> None:
    config = {"handlers": [{"id": "a", "action": "run_agent", "agentId": "x", "template": "hi"}]}
    srv = await start_server(config)
    await srv.post("a", {})
    await srv.idle()
    log = read_log(srv.runtime.settings.state_dir)
    assert [m["kind"] for m in log] == ["prompt", "reply"]
    assert log[0]["options"] is None


async def test_last_delivers_to_the_chat_the_session_used_last(start_server) -> None:
    session = {"sessionMode": "persistent", "sessionKey": "team"}
    config = {
        "handlers": [
            {
                "id": "greet",
                "action": "send_message",
                "target": {"channel": "telegram", "peer": "{{ chat }}"},
                "template": "hello",
                **session,
            },
            {
                "id": "ask",
                "action": "run_agent",
                "agentId": "main",
                "template": "{{ q }}",
                "deliver": {"channel": "last"},
                **session,
            },
        ]
    }
    srv = await start_server(config)
    await srv.post("greet", {"chat": "@alice"})
    await srv.idle()
    await srv.post("greet", {"chat": "@bob"})
    await srv.idle()
    _, body = await srv.post("ask", {"q": "status?"})
    await srv.idle()
    sent = _of(read_log(srv.runtime.settings.state_dir), "sent")
    assert [(m["channel"], m["peer"], m["text"]) for m in sent] == [
        ("telegram", "@alice", "hello"),
        ("telegram", "@bob", "hello"),
        ("telegram", "@bob", "[main #1] status?"),
    ]
    assert sent[-1]["idempotency_key"] == body["id"]


async def test_undeliverable_reply_is_a_dead_letter_and_the_agent_ran_once(
    start_server, recorder
) -> None:
    config = {
        "handlers": [
            {
                "id": "ask",
                "action": "run_agent",
                "agentId": "main",
                "template": "{{ q }}",
                "deliver": {"channel": "last"},
                "retry": TWO_TRIES,
            }
        ]
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    _, body = await srv.post("ask", {"q": "anyone?"})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    assert "no chat to deliver the reply to" in (record.last_error or "")
    log = read_log(srv.runtime.settings.state_dir)
    assert len(_of(log, "prompt")) == 1 and _of(log, "sent") == []
    assert recorder.of("agent_response") == []
    # Replayed once a chat exists, the run's reply is delivered without running it again.
    gateway = srv.runtime.gateway
    assert isinstance(gateway, LocalGateway)
    await gateway.send_message(
        channel="signal", peer="+100", text="hi", session=body["session"], idempotency_key="k1"
    )
    status, _ = await replay(srv.runtime, "incoming", body["id"])
    assert status == 202
    await srv.idle()
    log = read_log(srv.runtime.settings.state_dir)
    assert len(_of(log, "prompt")) == 1
    assert [(m["channel"], m["peer"]) for m in _of(log, "sent")] == [
        ("signal", "+100"),
        ("signal", "+100"),
    ]


async def test_wake_queues_the_rendered_text(start_server) -> None:
    config = {
        "handlers": [
            {"id": "ci", "action": "wake", "template": "CI failed on {{ branch }}", **RAW},
            {
                "id": "later",
                "action": "wake",
                "template": "digest: {{ n }} new issues",
                "wakeMode": "next-heartbeat",
                **RAW,
            },
            {"id": "empty", "action": "wake", "template": "{{ missing }}"},
        ]
    }
    srv = await start_server(config)
    _, ci = await srv.post("ci", {"branch": "main"})
    await srv.post("later", {"n": 3})
    _, empty = await srv.post("empty", {})
    await srv.idle()
    wakes = _of(read_log(srv.runtime.settings.state_dir), "wake")
    assert [(m["text"], json.loads(m["options"])) for m in wakes] == [
        ("CI failed on main", {"mode": "now"}),
        ("digest: 3 new issues", {"mode": "next-heartbeat"}),
    ]
    record = await srv.runtime.store.get_incoming(ci["id"])
    assert record is not None and record.status == "done"
    # Clawdbot refuses an empty wake: not sent, and not retried.
    record = await srv.runtime.store.get_incoming(empty["id"])
    assert record is not None and record.status == "dead" and record.attempts == 1
    assert "rendered no text" in (record.last_error or "")


class OldGateway:
    """A plugin gateway written against hookspecs 1.1: no run options, no wake."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self) -> str:
        return "old"

    async def send_message(self, **kwargs: Any) -> Mapping[str, Any]:
        return {}

    async def run_agent(
        self, *, agent_id: str, message: str, session: str, idempotency_key: str
    ) -> AgentReply:
        self.runs.append({"message": message})
        return AgentReply("ok", idempotency_key, agent_id)


class NewGateway(OldGateway):
    """A plugin gateway written against 1.2: it takes the run options and can wake."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes: list[tuple[str, str]] = []

    async def run_agent(  # type: ignore[override]
        self, *, agent_id: str, message: str, session: str, idempotency_key: str, **options: Any
    ) -> AgentReply:
        self.runs.append({"message": message, **options})
        return AgentReply("ok", idempotency_key, agent_id)

    async def wake(self, text: str, mode: str = "now") -> Mapping[str, Any]:
        self.wakes.append((text, mode))
        return {"ok": True}


class Provides:
    def __init__(self, gateway: OldGateway) -> None:
        self.gateway = gateway

    @hookimpl
    def register_gateways(self, register: Any) -> None:
        register("plugged", lambda options, env: self.gateway)


async def test_plugin_gateways_get_the_options_through_the_protocol(start_server) -> None:
    handlers = [
        {"id": "plain", "action": "run_agent", "agentId": "a", "template": "p", **RAW},
        {
            "id": "rich",
            "action": "run_agent",
            "agentId": "a",
            "template": "r",
            **RAW,
            "deliver": {"channel": "discord", "to": "dev"},
            "thinking": "high",
            "timeout": 30,
            "label": "l",
            "retry": TWO_TRIES,
        },
        {"id": "wake", "action": "wake", "template": "w", "retry": TWO_TRIES, **RAW},
    ]
    new = NewGateway()
    srv = await start_server(
        {"handlers": handlers, "gateway": {"type": "plugged"}}, plugins=[("g", Provides(new))]
    )
    for hook in ("plain", "rich", "wake"):
        await srv.post(hook, {})
    await srv.idle()
    assert new.runs == [
        {"message": "p"},
        {
            "message": "r",
            "deliver": ReplyTarget(channel="discord", to="dev"),
            "thinking": "high",
            "timeout": 30,
            "label": "l",
        },
    ]
    assert new.wakes == [("w", "now")]


async def test_a_gateway_from_before_the_options_keeps_working(tmp_path: Path, start_server):
    old = OldGateway()
    handlers = [
        {"id": "plain", "action": "run_agent", "agentId": "a", "template": "p", **RAW},
        {"id": "wake", "action": "wake", "template": "w", "retry": TWO_TRIES, **RAW},
    ]
    srv = await start_server(
        {"handlers": handlers, "gateway": {"type": "plugged"}}, plugins=[("g", Provides(old))]
    )
    _, plain = await srv.post("plain", {})
    _, wake = await srv.post("wake", {})
    await srv.idle()
    assert old.runs == [{"message": "p"}]
    record = await srv.runtime.store.get_incoming(plain["id"])
    assert record is not None and record.status == "done"
    record = await srv.runtime.store.get_incoming(wake["id"])
    assert record is not None and record.status == "dead" and record.attempts == 1
    assert "cannot wake" in (record.last_error or "")


async def test_clawdbot_http_gateway_maps_the_options_onto_the_agent_hook(
    start_server, make_sink
) -> None:
    hooks = await make_sink(default=202)
    base = {"action": "run_agent", "agentId": "main", "template": "t", **RAW}
    handlers = [
        {"id": "plain", **base},
        {
            "id": "rich",
            **base,
            "deliver": {"channel": "telegram", "to": "@ops"},
            "thinking": "minimal",
            "timeout": 45,
        },
        {"id": "last", **base, "deliver": {"channel": "last"}},
        {"id": "thread", **base, "deliver": {"channel": "slack", "to": "#c", "threadId": "1"}},
        {"id": "wake", "action": "wake", "template": "up", "wakeMode": "next-heartbeat", **RAW},
    ]
    gateway = {"type": "clawdbot-http", "url": f"http://127.0.0.1:{hooks.port}", "token": "t"}
    srv = await start_server({"handlers": handlers, "gateway": gateway})
    ids = {}
    for hook in ("plain", "rich", "last", "thread", "wake"):
        ids[hook] = (await srv.post(hook, {}))[1]["id"]
        await srv.idle()
    bodies = [(r["path"], json.loads(r["body"])) for r in hooks.received]
    common = {"message": "t", "name": "main"}
    assert [(path, {k: v for k, v in b.items() if k != "sessionKey"}) for path, b in bodies] == [
        ("/hooks/agent", {**common, "deliver": False}),
        (
            "/hooks/agent",
            {
                **common,
                "deliver": True,
                "channel": "telegram",
                "to": "@ops",
                "thinking": "minimal",
                "timeoutSeconds": 45,
            },
        ),
        ("/hooks/agent", {**common, "deliver": True, "channel": "last"}),
        ("/hooks/wake", {"text": "up", "mode": "next-heartbeat"}),
    ]
    # The hook has no thread: refused here, never run without it.
    record = await srv.runtime.store.get_incoming(ids["thread"])
    assert record is not None and record.status == "dead" and record.attempts == 1
    assert "no deliver.threadId" in (record.last_error or "")


BAD_OPTIONS = """
{webhooks: {handlers: [
  {id: "a", action: "run_agent", agentId: "x", template: "t",
   deliver: {channel: "slack", to: "{{ event.channel }}"}, thinking: "loud", timeout: 1.5,
   label: "%s"},
  {id: "b", action: "run_agent", agentId: "x", template: "t", deliver: {channel: "slack"},
   timeout: 0},
  {id: "c", action: "run_agent", agentId: "x", template: "t", deliver: {to: "x", room: "y"}},
  {id: "d", action: "wake", template: "{{ a", wakeMode: "later"},
]}}
"""


def test_run_options_are_checked_at_load_with_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "c.json5"
    path.write_text(BAD_OPTIONS % ("x" * 65))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    errors = caught.value.errors
    expected = [
        "webhooks.handlers[0].deliver.to: templates are not allowed here: where a reply goes "
        "comes from the config only",
        "webhooks.handlers[0].thinking: Must be one of: off, minimal, low, medium, high, xhigh.",
        "webhooks.handlers[0].timeout: Not a valid integer.",
        "webhooks.handlers[0].label: Length must be between 1 and 64.",
        "webhooks.handlers[1].deliver.to: required unless channel is 'last'",
        "webhooks.handlers[1].timeout: Must be greater than or equal to 1.",
        "webhooks.handlers[2].deliver.channel: Missing data for required field.",
        "webhooks.handlers[2].deliver.room: Unknown field.",
        "webhooks.handlers[3].wakeMode: Must be one of: now, next-heartbeat.",
    ]
    for line in expected:
        assert line in errors, errors
    assert any(e.startswith("webhooks.handlers[3].template: template syntax error") for e in errors)


OLD_LOG = """
CREATE TABLE messages (
    n INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
    session TEXT NOT NULL, channel TEXT, peer TEXT, agent_id TEXT, text TEXT NOT NULL,
    idempotency_key TEXT, run_id TEXT
);
INSERT INTO messages (at, kind, session, text) VALUES (1, 'sent', 's', 'before');
"""


async def test_a_log_from_before_run_options_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "local-gateway.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_LOG)
    conn.close()
    gateway = LocalGateway(path)
    await gateway.start()
    try:
        await gateway.run_agent(
            agent_id="a", message="m", session="s", idempotency_key="k", label="x"
        )
        await gateway.wake("w", "next-heartbeat")
    finally:
        await gateway.close()
    log = read_log(tmp_path)
    assert [(m["kind"], m["text"], m["options"]) for m in log] == [
        ("sent", "before", None),
        ("prompt", "m", '{"label": "x"}'),
        ("reply", "[a #1] m", None),
        ("wake", "w", '{"mode": "next-heartbeat"}'),
    ]


def test_messages_lists_deliveries_and_wakes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()

    async def fill() -> None:
        gateway = LocalGateway(state / "local-gateway.sqlite3")
        await gateway.start()
        try:
            await gateway.run_agent(
                agent_id="a",
                message="m",
                session="s",
                idempotency_key="k",
                deliver=ReplyTarget("slack", "#dev"),
            )
            await gateway.wake("w", "next-heartbeat")
        finally:
            await gateway.close()

    asyncio.run(fill())
    config = tmp_path / "c.json5"
    config.write_text(f'{{webhooks: {{stateDir: "{state}"}}}}')
    result = CliRunner().invoke(main, ["messages", "--config", str(config)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert [row[2:] for row in rows] == [
        ["prompt", "s", "a", "m"],
        ["reply", "s", "a", "[a", "#1]", "m"],
        ["sent", "s", "slack:#dev", "[a", "#1]", "m"],
        ["wake", "main", "main", "(next-heartbeat)", "w"],
    ]


def test_messages_shows_a_wrapped_prompt_on_one_row(tmp_path: Path) -> None:
    from clawdbot_webhooks_hookspecs import wrap_untrusted

    state = tmp_path / "state"
    state.mkdir()
    prompt = wrap_untrusted("alert: disk\nfull", {"Source": "webhook", "Hook": "h"})

    async def fill() -> None:
        gateway = LocalGateway(state / "local-gateway.sqlite3")
        await gateway.start()
        try:
            await gateway.run_agent(agent_id="a", message=prompt, session="s", idempotency_key="k")
        finally:
            await gateway.close()

    asyncio.run(fill())
    config = tmp_path / "c.json5"
    config.write_text(f'{{webhooks: {{stateDir: "{state}"}}}}')
    table = CliRunner().invoke(main, ["messages", "--config", str(config)])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert len(lines) == 3  # heading, prompt, reply
    assert lines[1].endswith("prompt  s        a         [untrusted] alert: disk ⏎ full")
    whole = CliRunner().invoke(main, ["messages", "--json", "--config", str(config)])
    assert json.loads(whole.output)[0]["text"] == prompt


async def test_clawdbot_http_gateway_keeps_a_payloads_session_key_out_of_the_agents_own(
    start_server, make_sink
) -> None:
    """As over the WebSocket: a persistent key rendered from a payload (``main`` here) goes
    under ``hooks:``, where it cannot name the agent's main session (the hook files it as
    ``agent:main:<key>``); an ephemeral session is sent as its ``hook:<uuid>``."""
    hooks = await make_sink(default=202)
    base = {"action": "run_agent", "agentId": "main", "template": "t", **RAW}
    handlers = [
        {"id": "kept", **base, "sessionMode": "persistent", "sessionKey": "{{ key }}"},
        {"id": "once", **base},
    ]
    gateway = {"type": "clawdbot-http", "url": f"http://127.0.0.1:{hooks.port}", "token": "t"}
    srv = await start_server({"handlers": handlers, "gateway": gateway})
    _, kept = await srv.post("kept", {"key": "main"})
    _, once = await srv.post("once", {})
    await srv.idle()
    keys = [json.loads(r["body"])["sessionKey"] for r in hooks.received]
    assert kept["session"] == "main"
    assert keys == ["hooks:main", once["session"]]
    assert once["session"].startswith("hook:")

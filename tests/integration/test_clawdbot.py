"""Against a real Clawdbot gateway (Node 22, clawdbot 2026.1.24-3) with a streaming model stub."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clawdbot_process import (
    FAST_RETRY,
    INGRESS_TOKEN,
    ClawdbotProcess,
    free_port,
    gateway_options,
)
from clawdbot_webhooks_hookspecs import (
    BOUNDARY_END,
    BOUNDARY_START,
    SECURITY_NOTICE,
    Event,
    GatewayError,
    hookimpl,
)
from clawdbot_webhooks_hookspecs.untrusted import fold_for_matching
from model_stub import ModelStub, content_of
from model_stub import text_of as model_stub_text

from clawdbot_webhooks.builtin.clawdbot.client import GatewayClient

pytestmark = pytest.mark.slow

#: Any spelling of an untrusted-content marker, on the folded text.
ANY_MARKER = re.compile(r"(END[\s_.-]*)?EXTERNAL[\s_.-]*UNTRUSTED[\s_.-]*CONTENT", re.I)


class Collector:
    """An on_event plugin that records every event on the bus."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str, **match: Any) -> list[Event]:
        found = [e for e in self.events if e.type == kind]
        for key, value in match.items():
            found = [e for e in found if e.data.get(key) == value or getattr(e, key, None) == value]
        return found

    async def wait_for(
        self, kind: str, count: int = 1, timeout: float = 30, **match: Any
    ) -> list[Event]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind, **match)) < count:
            if time.monotonic() > deadline:
                seen = [(e.type, dict(e.data)) for e in self.events]
                raise AssertionError(f"wanted {count} {kind} {match}; saw {seen}")
            await asyncio.sleep(0.02)
        return self.of(kind, **match)


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


async def test_webhook_run_agent_gets_real_reply_to_subscriber(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any, make_sink: Any
) -> None:
    sink = await make_sink()
    events = Collector()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "ask",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "question {{q}}",
                }
            ],
            "outgoing": [
                {"id": "out", "url": sink.url, "events": ["agent_response"], "retry": FAST_RETRY}
            ],
            "gateway": gateway_options(clawdbot),
            "incoming": {"retry": FAST_RETRY},
        },
        plugins=[("collector", events)],
    )
    m = marker()
    status, body = await server.post("ask", {"q": m})
    assert status == 202
    await sink.wait_for(1, timeout=60)
    delivered = sink.json_bodies()[0]
    assert delivered["type"] == "agent_response"
    assert delivered["response"]["text"] == f"STUB[1] question {m}"
    assert delivered["response"]["runId"] == body["id"]
    assert delivered["response"]["agentId"] == "main"
    assert delivered["causation"] == body["id"]
    assert delivered["session"] == body["session"]
    # Clawdbot's own run events arrive mapped, attributed to the delivery and its session.
    started = await events.wait_for("session_started", source="clawdbot", runId=body["id"])
    ended = await events.wait_for("session_ended", source="clawdbot", runId=body["id"])
    assert started[0].causation == body["id"] and started[0].session == body["session"]
    assert ended[0].data["reason"] == "completed"
    await server.idle()
    await asyncio.sleep(0.3)  # a duplicate agent_response from the chat stream would be here
    assert len(events.of("agent_response", runId=body["id"])) == 1
    assert len(sink.received) == 1
    assert model_stub.runs_with(m) == 1


async def test_persistent_session_keeps_clawdbot_history(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    m = marker()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "chat",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "{{text}}",
                    "sessionMode": "persistent",
                    "sessionKey": f"conv-{m}",
                    "mode": "sync",
                    "syncTimeout": 60,
                }
            ],
            "gateway": gateway_options(clawdbot),
        }
    )
    status, first = await server.post("chat", {"text": f"first {m}"})
    assert status == 200, first
    assert first["result"]["text"] == f"STUB[1] first {m}"
    status, second = await server.post("chat", {"text": f"second {m}"})
    assert status == 200, second
    assert second["session"] == first["session"] == f"conv-{m}"
    # The model saw the earlier turn: Clawdbot kept the conversation.
    assert second["result"]["text"] == f"STUB[2] second {m}"
    call = next(c for c in model_stub.calls() if content_of(c["prompt"]) == f"second {m}")
    said = [(msg["role"], json.dumps(msg["content"])) for msg in call["messages"][1:]]
    assert said[0][0] == "user" and f"first {m}" in said[0][1]
    assert said[1][0] == "assistant" and f"STUB[1] first {m}" in said[1][1]


async def test_wrong_token_is_a_clear_error_at_start_up(
    clawdbot: ClawdbotProcess, start_server: Any
) -> None:
    with pytest.raises(GatewayError) as caught:
        await start_server(
            {"handlers": [], "gateway": gateway_options(clawdbot, token="not-the-token")}
        )
    text = str(caught.value)
    assert "refused the connection" in text and "token mismatch" in text
    assert "not-the-token" not in text


def _check_probe(tmp_path: Path, gateway: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / f"probe-{uuid.uuid4().hex[:6]}.json5"
    config.write_text(
        json.dumps({"webhooks": {"stateDir": str(tmp_path / "state"), "gateway": gateway}})
    )
    return subprocess.run(
        [sys.executable, "-m", "clawdbot_webhooks", "check", "--probe", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )


def test_check_probe_reports_success_and_exact_failures(
    clawdbot: ClawdbotProcess, tmp_path: Path
) -> None:
    ok = _check_probe(tmp_path, gateway_options(clawdbot))
    assert ok.returncode == 0, ok.stderr
    assert f"Gateway OK: Clawdbot gateway at {clawdbot.url} (protocol 3" in ok.stdout

    bad = _check_probe(tmp_path, gateway_options(clawdbot, token="wrong-secret-123"))
    assert bad.returncode == 1
    assert "Gateway probe failed" in bad.stderr and "token mismatch" in bad.stderr
    assert "wrong-secret-123" not in bad.stderr + bad.stdout

    nobody = f"ws://127.0.0.1:{free_port()}"
    refused = _check_probe(tmp_path, {"type": "clawdbot", "url": nobody, "token": "x"})
    assert refused.returncode == 1
    assert f"cannot connect to {nobody}: Connection refused" in refused.stderr

    http = _check_probe(
        tmp_path, {"type": "clawdbot-http", "url": clawdbot.http_url, "token": clawdbot.hooks_token}
    )
    assert http.returncode == 0, http.stderr
    assert "token accepted" in http.stdout
    http_bad = _check_probe(
        tmp_path, {"type": "clawdbot-http", "url": clawdbot.http_url, "token": "nope"}
    )
    assert http_bad.returncode == 1 and "401" in http_bad.stderr


async def test_gateway_killed_and_restarted_every_delivery_runs_once(
    make_clawdbot: Callable[[], ClawdbotProcess], model_stub: ModelStub, start_server: Any
) -> None:
    gateway = await asyncio.to_thread(make_clawdbot)
    events = Collector()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "ask",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "job {{n}} {{m}}",
                }
            ],
            "gateway": gateway_options(gateway, offlineWait=60, heartbeat=1),
            "incoming": {"retry": {"maxAttempts": 5, "initialDelay": 0.2, "maxDelay": 1}},
        },
        plugins=[("collector", events)],
    )
    m = marker()
    status, before = await server.post("ask", {"n": 0, "m": m})
    assert status == 202
    await server.idle(timeout=60)

    gateway.kill()
    accepted = []
    for n in range(1, 6):
        status, body = await server.post("ask", {"n": n, "m": m})
        assert status == 202  # acknowledged while Clawdbot is down
        accepted.append(body["id"])
    await asyncio.sleep(0.5)
    assert await server.runtime.store.count_incoming("pending") == 5

    await asyncio.to_thread(gateway.start)
    await server.idle(timeout=90)
    client: GatewayClient = server.runtime.gateway.client  # type: ignore[attr-defined]
    assert client.connections >= 2
    for delivery in [before["id"], *accepted]:
        record = await server.runtime.store.get_incoming(delivery)
        assert record is not None and record.status == "done", record
        assert len(events.of("agent_response", runId=delivery)) == 1
    for n in range(6):
        assert model_stub.runs_with(f"job {n} {m}") == 1, model_stub.prompts()


async def test_send_to_unconfigured_channel_dead_letters_with_clawdbots_message(
    clawdbot: ClawdbotProcess, start_server: Any, make_sink: Any
) -> None:
    sink = await make_sink()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "notify",
                    "action": "send_message",
                    "target": {"channel": "discord", "peer": "dev-channel"},
                    "template": "hello {{x}}",
                }
            ],
            "outgoing": [{"id": "errs", "url": sink.url, "events": ["error"], "retry": FAST_RETRY}],
            "gateway": gateway_options(clawdbot),
            "incoming": {"retry": FAST_RETRY},
        }
    )
    status, body = await server.post("notify", {"x": 1})
    assert status == 202
    await sink.wait_for(1, timeout=30)
    error = sink.json_bodies()[0]
    assert error["type"] == "error" and error["causation"] == body["id"]
    assert "unsupported channel: discord" in error["data"]["error"]
    # A channel Clawdbot does not have will not appear by retrying: one attempt, then dead.
    assert error["data"]["attempts"] == 1
    record = await server.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    dead = [d for d in await server.runtime.store.dead_letters() if d.id == body["id"]]
    assert dead and "unsupported channel: discord" in (dead[0].error or "")


async def test_event_bridge_plugin_forwards_hooks_to_ingress(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any, ingress_port: int
) -> None:
    events = Collector()
    server = await start_server(
        {
            "incoming": {"eventIngress": {"token": INGRESS_TOKEN}, "retry": FAST_RETRY},
            "handlers": [
                {"id": "ask", "action": "run_agent", "agentId": "main", "template": "{{q}}"}
            ],
            "gateway": gateway_options(clawdbot),
        },
        plugins=[("collector", events)],
        port=ingress_port,
    )
    m = marker()
    # A chat message into Clawdbot from another client (as its web chat would send it).
    client = GatewayClient(clawdbot.url, clawdbot.token)
    await client.start()
    try:
        await client.request(
            "chat.send",
            {"sessionKey": f"agent:main:web-{m}", "message": f"hi {m}", "idempotencyKey": m},
        )
    finally:
        await client.close()
    received = await events.wait_for("message_received", source="clawdbot-plugin", timeout=60)
    mine = [e for e in received if m in str(e.data.get("text"))]
    assert mine, [dict(e.data) for e in received]
    replies = await events.wait_for("agent_response", source="clawdbot-plugin", timeout=60)
    reply = [e for e in replies if e.session == f"agent:main:web-{m}"]
    # (Clawdbot's web chat appends "[message_id: ...]" to what the model sees.)
    assert reply and reply[0].data["text"].startswith(f"STUB[1] hi {m}")
    assert reply[0].data["hook"] == "agent_end"

    # A run we started ourselves: its agent_end reaches the ingress but is not published
    # again — the run_agent action already published the reply.
    status, body = await server.post("ask", {"q": f"own {m}"})
    assert status == 202
    await events.wait_for("agent_response", runId=body["id"], timeout=60)
    await server.idle(timeout=30)
    await asyncio.sleep(1.0)
    own = [e for e in events.of("agent_response") if f"own {m}" in str(e.data.get("text"))]
    assert len(own) == 1 and own[0].data.get("source") is None


async def test_http_hooks_gateway_runs_the_agent_without_reply_text(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    events = Collector()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "ask",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "via http {{m}}",
                },
                {
                    "id": "notify",
                    "action": "send_message",
                    "target": {"channel": "discord", "peer": "p"},
                    "template": "x",
                },
            ],
            "gateway": {
                "type": "clawdbot-http",
                "url": clawdbot.http_url,
                "token": clawdbot.hooks_token,
            },
            "incoming": {"retry": FAST_RETRY},
        },
        plugins=[("collector", events)],
    )
    m = marker()
    status, body = await server.post("ask", {"m": m})
    assert status == 202
    await server.idle(timeout=30)
    reply = (await events.wait_for("agent_response", causation=body["id"]))[0]
    # The hook answers 202 before the run: a run id but no reply text.
    assert reply.data["text"] == "" and reply.data["runId"]
    for _ in range(200):
        if model_stub.runs_with(f"via http {m}"):
            break
        await asyncio.sleep(0.05)
    assert model_stub.runs_with(f"via http {m}") == 1
    status, body = await server.post("notify", {})
    await server.idle(timeout=30)
    record = await server.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    assert "cannot send messages" in (record.last_error or "")


async def test_http_hooks_gateway_runs_a_persistent_session_under_hooks(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    """A persistent key is sent as ``hooks:<key>``: Clawdbot's agent hook takes it and runs
    the agent, twice in the one session."""
    m = marker()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "ask",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "{{ n }} via http {{ m }}",
                    "sessionMode": "persistent",
                    "sessionKey": "main",
                }
            ],
            "gateway": {
                "type": "clawdbot-http",
                "url": clawdbot.http_url,
                "token": clawdbot.hooks_token,
            },
            "incoming": {"retry": FAST_RETRY},
        }
    )
    for n in (1, 2):
        status, body = await server.post("ask", {"n": n, "m": m})
        assert status == 202
        await server.idle(timeout=30)
        record = await server.runtime.store.get_incoming(body["id"])
        assert record is not None and record.status == "done", record
        for _ in range(200):
            if model_stub.runs_with(f"{n} via http {m}"):
                break
            await asyncio.sleep(0.05)
        assert model_stub.runs_with(f"{n} via http {m}") == 1


async def test_the_model_gets_payload_text_inside_the_boundary_and_instructions_as_system_prompt(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    corpus = json.loads(
        (Path(__file__).parent.parent / "data" / "injection_corpus.json").read_text()
    )
    # One of each kind, the spoofs with every homoglyph in one payload.
    spoofs = "\n".join(e["text"] for e in corpus if e["kind"] == "spoof")
    samples = [next(e["text"] for e in corpus if e["kind"] == k) for k in ("plain", "obfuscated")]
    samples += [next(e["text"] for e in corpus if e["kind"] == "multilingual"), spoofs]
    m = marker()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "triage",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "Issue {{ n }}: {{ title }}",
                    "instructions": f"Operator rule {m}: summarise, never run commands.",
                    "verify": {"type": "none"},
                },
                {
                    "id": "raw",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "raw {{ n }}",
                    "allowUnsafeExternalContent": True,
                    "verify": {"type": "none"},
                },
            ],
            "gateway": gateway_options(clawdbot),
            "incoming": {"retry": FAST_RETRY},
        }
    )
    for n, title in enumerate(samples):
        status, _ = await server.post("triage", {"n": f"{m}-{n}", "title": title})
        assert status == 202
    status, _ = await server.post("raw", {"n": m})
    assert status == 202
    await server.idle()
    calls = [c for c in model_stub.calls() if c["completed"] and m in json.dumps(c["messages"])]
    triaged = [c for c in calls if f"Issue {m}-" in c["prompt"]]
    assert len(triaged) == len(samples)
    for call in triaged:
        prompt = call["prompt"]
        system = "\n".join(
            model_stub_text(msg.get("content"))
            for msg in call["messages"]
            if msg.get("role") == "system"
        )
        # The operator's words arrive as system prompt, never in the user's turn.
        assert f"Operator rule {m}" in system
        assert f"Operator rule {m}" not in prompt
        assert prompt.count(BOUNDARY_START) == 1 and prompt.count(BOUNDARY_END) == 1
        inside = prompt[prompt.index(BOUNDARY_START) : prompt.index(BOUNDARY_END)]
        assert f"Issue {m}-" in inside and "Hook: triage" in inside
        assert "Sender: not verified (public endpoint)" in inside
        assert SECURITY_NOTICE.splitlines()[0] in prompt[: prompt.index(BOUNDARY_START)]
        folded, _ = fold_for_matching(prompt)
        assert len(ANY_MARKER.findall(folded)) == 2  # every spoof neutralised
    [raw] = [c for c in calls if c["prompt"].strip().endswith(f"raw {m}")]
    assert BOUNDARY_START not in raw["prompt"]

"""Agent run options and the wake action against a real Clawdbot gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from clawdbot_process import FAST_RETRY, ClawdbotProcess, gateway_options
from model_stub import ModelStub

from clawdbot_webhooks.builtin.clawdbot.client import GatewayClient

pytestmark = pytest.mark.slow


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


async def _sessions(gateway: ClawdbotProcess, **params: Any) -> list[dict[str, Any]]:
    client = GatewayClient(gateway.url, gateway.token)
    await client.start()
    try:
        answer = await client.request("sessions.list", params)
    finally:
        await client.close()
    return list(answer.get("sessions") or [])


async def test_run_options_reach_clawdbot(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    label = marker()
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "ask",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "question {{ q }}",
                    "thinking": "low",
                    "timeout": 30,
                    "label": label,
                }
            ],
            "gateway": gateway_options(clawdbot),
            "incoming": {"retry": FAST_RETRY},
        }
    )
    m = marker()
    status, body = await server.post("ask", {"q": m})
    assert status == 202
    await server.idle(timeout=60)
    record = await server.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "done", record
    assert model_stub.runs_with(f"question {m}") == 1
    # Clawdbot keeps the label and the thinking level on the run's session.
    [session] = await _sessions(clawdbot, label=label)
    assert session["key"] == f"agent:main:{body['session']}"
    assert session["thinkingLevel"] == "low"


async def test_undeliverable_reply_dead_letters_with_clawdbots_message_after_one_run(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    # Clawdbot knows Discord but this gateway has no Discord account: the run happens, its
    # reply cannot be delivered, and the agent answer is ok: false.
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "summarise",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "summarise {{ pr }}",
                    "deliver": {"channel": "discord", "to": "channel:123"},
                },
                {
                    "id": "nowhere",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "nowhere {{ pr }}",
                    "deliver": {"channel": "nosuchchat", "to": "x"},
                },
            ],
            "gateway": gateway_options(clawdbot),
            "incoming": {"retry": FAST_RETRY},
        }
    )
    m = marker()
    status, body = await server.post("summarise", {"pr": m})
    assert status == 202
    await server.idle(timeout=90)
    record = await server.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    assert "Unknown channel: discord" in (record.last_error or "")
    # Retried by the handler's policy; every retry got Clawdbot's answer for the same run.
    assert record.attempts == FAST_RETRY["maxAttempts"]
    history = await server.runtime.store.attempts(body["id"])
    assert all("Unknown channel: discord" in (a.error or "") for a in history)
    assert model_stub.runs_with(f"summarise {m}") == 1

    # A channel Clawdbot has never heard of is refused before any run, and not retried.
    status, body = await server.post("nowhere", {"pr": m})
    await server.idle(timeout=30)
    record = await server.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead" and record.attempts == 1
    assert "unknown channel: nosuchchat" in (record.last_error or "")
    assert model_stub.runs_with(f"nowhere {m}") == 0


async def test_wake_is_accepted(clawdbot: ClawdbotProcess, start_server: Any) -> None:
    server = await start_server(
        {
            "handlers": [
                {"id": "now", "action": "wake", "template": "CI failed on {{ branch }}"},
                {
                    "id": "later",
                    "action": "wake",
                    "template": "digest {{ n }}",
                    "wakeMode": "next-heartbeat",
                },
            ],
            "gateway": gateway_options(clawdbot),
            "incoming": {"retry": FAST_RETRY},
        }
    )
    ids = [(await server.post("now", {"branch": "main"}))[1]["id"]]
    ids.append((await server.post("later", {"n": 2}))[1]["id"])
    await server.idle(timeout=30)
    for delivery in ids:
        record = await server.runtime.store.get_incoming(delivery)
        assert record is not None and record.status == "done", record
        assert record.attempts == 1


async def test_http_hooks_gateway_passes_the_options_on(
    clawdbot: ClawdbotProcess, model_stub: ModelStub, start_server: Any
) -> None:
    server = await start_server(
        {
            "handlers": [
                {
                    "id": "ask",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "via hook {{ m }}",
                    "deliver": {"channel": "last"},
                    "thinking": "minimal",
                    "timeout": 30,
                },
                {"id": "wake", "action": "wake", "template": "hook wake {{ m }}"},
            ],
            "gateway": {
                "type": "clawdbot-http",
                "url": clawdbot.http_url,
                "token": clawdbot.hooks_token,
            },
            "incoming": {"retry": FAST_RETRY},
        }
    )
    m = marker()
    _, ask = await server.post("ask", {"m": m})
    _, wake = await server.post("wake", {"m": m})
    await server.idle(timeout=30)
    for delivery in (ask["id"], wake["id"]):
        record = await server.runtime.store.get_incoming(delivery)
        assert record is not None and record.status == "done", record
    # The hook answered before the run; the run happens all the same.
    for _ in range(200):
        if model_stub.runs_with(f"via hook {m}"):
            break
        await asyncio.sleep(0.05)
    assert model_stub.runs_with(f"via hook {m}") == 1

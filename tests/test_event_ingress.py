"""``POST /events/ingest``: what the Clawdbot event-bridge plugin sends, mapped onto the bus."""

from __future__ import annotations

import asyncio
from typing import Any

from clawdbot_webhooks_hookspecs import Event, hookimpl

TOKEN = "ingress-token-0123"


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)


async def _server(start_server: Any, events: Collector | None = None, **incoming: Any) -> Any:
    return await start_server(
        {"incoming": {"eventIngress": {"token": TOKEN}, **incoming}, "handlers": []},
        plugins=[("collector", events or Collector())],
    )


async def _post(server: Any, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with server.session.post(f"{server.base}/events/ingest", json=body, headers=headers) as r:
        return r.status, await r.json()


def _call(hook: str, event: dict[str, Any], context: dict[str, Any] | None = None) -> Any:
    return {
        "id": f"call-{hook}",
        "hook": hook,
        "timestamp": 1_700_000_000_000,
        "event": event,
        "context": context or {},
    }


async def test_token_is_required(start_server: Any) -> None:
    server = await _server(start_server)
    body = _call("message_received", {"from": "a", "content": "b"})
    for token in (None, "wrong", ""):
        status, answer = await _post(server, body, token)
        assert status == 401 and answer == {"ok": False, "error": "missing or wrong bearer token"}


async def test_bad_bodies_are_400(start_server: Any) -> None:
    server = await _server(start_server)
    for body, message in [
        ([1], "body must be a JSON object"),
        ({"id": "x", "hook": "nope", "event": {}}, "hook must be one of"),
        ({"hook": "agent_end", "event": {}}, "id must be a non-empty string"),
        ({"id": "x", "hook": "agent_end", "event": 3}, "event and context must be objects"),
    ]:
        status, answer = await _post(server, body)
        assert status == 400 and answer["ok"] is False and message in answer["error"]
    async with server.session.post(
        f"{server.base}/events/ingest", data=b"{", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        assert r.status == 400 and (await r.json())["error"] == "body is not valid JSON"


async def test_hooks_become_bus_events(start_server: Any) -> None:
    events = Collector()
    server = await _server(start_server, events)
    context = {"channelId": "telegram", "conversationId": "chat-42"}
    status, answer = await _post(
        server, _call("message_received", {"from": "+1555", "content": "你好"}, context)
    )
    assert status == 202 and answer["type"] == "message_received"
    status, _ = await _post(
        server,
        _call("agent_end", {"text": "reply", "success": True}, {"sessionKey": "agent:ops:x"}),
    )
    assert status == 202
    status, _ = await _post(server, _call("agent_end", {"success": False, "error": "boom"}))
    assert status == 202
    status, _ = await _post(server, _call("session_start", {"sessionId": "s-1"}))
    assert status == 202
    await asyncio.sleep(0.05)
    await server.runtime.bus.drain(timeout=1)
    by_type = {e.type: e for e in events.events}
    received = by_type["message_received"]
    assert received.data["from"] == "+1555" and received.data["text"] == "你好"
    assert received.data["channel"] == "telegram" and received.session == "chat-42"
    assert received.timestamp == "2023-11-14T22:13:20Z"
    assert by_type["agent_response"].data["text"] == "reply"
    assert by_type["agent_response"].data["agentId"] == "ops"
    assert by_type["error"].data["error"] == "boom"
    assert by_type["session_started"].session == "s-1"
    # A retried POST of the same call carries the same event id.
    again = await _post(
        server, _call("message_received", {"from": "+1555", "content": "你好"}, context)
    )
    assert again[1]["id"] == answer["id"]


async def test_not_configured_is_404(start_server: Any) -> None:
    server = await start_server({"handlers": []})
    status, answer = await _post(server, _call("agent_end", {}))
    assert status == 404 and answer["ok"] is False


async def test_a_time_no_calendar_holds_is_taken_as_now(start_server: Any) -> None:
    """A bridge's timestamp far beyond the year 9999 (or infinite) is no reason to refuse
    the event, nor to answer 500: it is stamped with the time it arrived."""
    server = await _server(start_server)
    for stamp in (1e20, 10**30, 1e308):
        call = {**_call("message_received", {"from": "a", "content": "b"}), "timestamp": stamp}
        call["id"] = f"call-{stamp}"
        status, answer = await _post(server, call)
        assert status < 300 and answer["ok"] is True, (stamp, answer)

"""The Clawdbot gateway client against a small in-test server speaking protocol v3, for the
failures that are hard to provoke in a real gateway (protocol mismatch, a socket dropped in
the middle of a request, a gateway that goes silent)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from clawdbot_webhooks_hookspecs import Event, GatewayEnv, GatewayError

from clawdbot_webhooks.builtin.clawdbot.client import (
    ClientOptions,
    GatewayClient,
    HandshakeRejected,
)
from clawdbot_webhooks.builtin.clawdbot.gateway import ClawdbotGateway

Handler = Callable[[web.WebSocketResponse, dict[str, Any], int], Awaitable[None]]


@dataclass
class FakeGateway:
    """Speaks the Clawdbot gateway protocol; each test scripts how requests are answered."""

    token: str = "right-token"
    protocol: int = 3
    hello_protocol: int = 3
    tick_ms: int = 30_000
    first_frame: dict[str, Any] | None = None
    down: bool = False
    on_request: Handler | None = None
    #: Connections (by number) answered with an error whose ``details`` is not an object, and
    #: whose hello's ``policy`` is not one either, as a gateway starting up may.
    odd_on: set[int] = field(default_factory=set)
    requests: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    connections: int = 0
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503, text="restarting")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        n = self.connections
        self.sockets.append(ws)
        challenge = {"type": "event", "event": "connect.challenge", "payload": {"nonce": "x"}}
        await ws.send_json(self.first_frame or challenge)
        connect = await ws.receive_json()
        params = connect["params"]
        res = {"type": "res", "id": connect["id"]}
        if params["maxProtocol"] < self.protocol or params["minProtocol"] > self.protocol:
            error = {
                "code": "INVALID_REQUEST",
                "message": "protocol mismatch",
                "details": {"expectedProtocol": self.protocol},
            }
            await ws.send_json({**res, "ok": False, "error": error})
            await ws.close(code=1002, message=b"protocol mismatch")
            return ws
        if n in self.odd_on:
            error = {"code": "UNAVAILABLE", "message": "gateway starting", "details": "in 1s"}
            await ws.send_json({**res, "ok": False, "error": error})
            await ws.close()
            return ws
        if (params.get("auth") or {}).get("token") != self.token:
            error = {"code": "INVALID_REQUEST", "message": "unauthorized: gateway token mismatch"}
            await ws.send_json({**res, "ok": False, "error": error})
            await ws.close(code=1008, message=b"unauthorized")
            return ws
        hello = {
            "type": "hello-ok",
            "protocol": self.hello_protocol,
            "server": {"version": "fake"},
            "policy": {"tickIntervalMs": self.tick_ms},
        }
        await ws.send_json({**res, "ok": True, "payload": hello})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            self.requests.append((n, frame))
            if self.on_request is not None:
                await self.on_request(ws, frame, n)
        return ws

    async def drop_all(self) -> None:
        for ws in self.sockets:
            await ws.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway()
    app = web.Application()
    app.router.add_get("/", gateway.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gateway.port = runner.addresses[0][1]
    yield gateway
    await runner.cleanup()


def client_for(fake: FakeGateway, token: str = "right-token", **opts: Any) -> GatewayClient:
    options = ClientOptions(reconnect_initial=0.02, reconnect_max=0.1, offline_wait=5, **opts)
    return GatewayClient(fake.url, token, options=options)


def res(frame: dict[str, Any], payload: Any = None, ok: bool = True, error: Any = None) -> Any:
    answer = {"type": "res", "id": frame["id"], "ok": ok, "payload": payload}
    if error is not None:
        answer["error"] = error
    return answer


def agent_events(run_id: str, session_key: str, text: str) -> list[dict[str, Any]]:
    def event(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"type": "event", "event": name, "payload": {"runId": run_id, **payload}}

    return [
        event(
            "agent", {"stream": "lifecycle", "data": {"phase": "start"}, "sessionKey": session_key}
        ),
        event(
            "chat",
            {
                "state": "final",
                "sessionKey": session_key,
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            },
        ),
        event(
            "agent", {"stream": "lifecycle", "data": {"phase": "end"}, "sessionKey": session_key}
        ),
    ]


def final(run_id: str, text: str) -> dict[str, Any]:
    return {"runId": run_id, "status": "ok", "result": {"payloads": [{"text": text}]}}


# ------------------------------------------------------------------------- handshake


async def test_protocol_mismatch_names_both_versions(fake: FakeGateway) -> None:
    fake.protocol = 4
    with pytest.raises(HandshakeRejected) as caught:
        await client_for(fake).probe()
    assert "protocol mismatch" in str(caught.value)
    assert "gateway speaks protocol 4, this client 3" in str(caught.value)
    assert caught.value.retry is False


async def test_hello_with_another_protocol_is_a_mismatch(fake: FakeGateway) -> None:
    fake.hello_protocol = 2
    with pytest.raises(
        HandshakeRejected, match="protocol mismatch: the gateway answered protocol 2"
    ):
        await client_for(fake).probe()


async def test_something_that_is_not_a_clawdbot_gateway(fake: FakeGateway) -> None:
    fake.first_frame = {"hello": "world"}
    with pytest.raises(
        HandshakeRejected, match=r"did not start with a Clawdbot connect\.challenge"
    ):
        await client_for(fake).probe()


async def test_wrong_token_fails_start_without_showing_it(fake: FakeGateway) -> None:
    client = client_for(fake, token="wrong-token-value")
    with pytest.raises(HandshakeRejected) as caught:
        await client.start()
    assert "unauthorized: gateway token mismatch" in str(caught.value)
    assert "wrong-token-value" not in str(caught.value)
    await client.close()


async def test_plain_http_server_is_not_a_websocket(aiohttp_server: Any) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    server = await aiohttp_server(app)
    client = GatewayClient(f"ws://127.0.0.1:{server.port}/", "t")
    with pytest.raises(GatewayError, match=r"did not accept a WebSocket connection \(HTTP 200\)"):
        await client.probe()


# ------------------------------------------------------------------------- requests


async def test_agent_answer_in_two_phases(fake: FakeGateway) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        key = frame["params"]["idempotencyKey"]
        await ws.send_json(res(frame, {"runId": key, "status": "accepted"}))
        await asyncio.sleep(0.05)
        await ws.send_json(res(frame, final(key, "done")))

    fake.on_request = answer
    client = client_for(fake)
    await client.start()
    try:
        result = await client.request(
            "agent", {"message": "m", "idempotencyKey": "k1"}, expect_final=True
        )
    finally:
        await client.close()
    assert result["status"] == "ok" and result["result"]["payloads"][0]["text"] == "done"


@pytest.mark.parametrize(("code", "retry"), [("INVALID_REQUEST", False), ("UNAVAILABLE", True)])
async def test_error_answers_carry_clawdbots_message(
    fake: FakeGateway, code: str, retry: bool
) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        await ws.send_json(res(frame, ok=False, error={"code": code, "message": "nope: x"}))

    fake.on_request = answer
    client = client_for(fake)
    await client.start()
    try:
        with pytest.raises(GatewayError) as caught:
            await client.request("send", {"to": "a"})
    finally:
        await client.close()
    assert str(caught.value) == f"Clawdbot send failed: nope: x ({code})"
    assert caught.value.retry is retry


async def test_socket_dropped_mid_agent_request_is_sent_again(fake: FakeGateway) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        key = frame["params"]["idempotencyKey"]
        await ws.send_json(res(frame, {"runId": key, "status": "accepted"}))
        if n == 1:
            await ws.close()  # the gateway dies after accepting
            return
        await ws.send_json(res(frame, final(key, "after reconnect")))

    fake.on_request = answer
    client = client_for(fake)
    await client.start()
    try:
        result = await client.request(
            "agent", {"idempotencyKey": "dlv_1"}, expect_final=True, idempotent=True
        )
    finally:
        await client.close()
    assert result["result"]["payloads"][0]["text"] == "after reconnect"
    assert fake.connections == 2
    keys = [(n, f["params"]["idempotencyKey"]) for n, f in fake.requests]
    assert keys == [(1, "dlv_1"), (2, "dlv_1")]  # the same key: Clawdbot runs it once


async def test_run_that_finished_while_disconnected_is_fetched_again(fake: FakeGateway) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        key = frame["params"]["idempotencyKey"]
        asked = sum(1 for _, f in fake.requests if f["method"] == "agent")
        if asked == 1:
            await ws.send_json(res(frame, {"runId": key, "status": "accepted"}))
            await ws.close()
        elif asked == 2:
            # Still running: Clawdbot answers from its dedupe cache with "accepted" only, and
            # the run's end is seen as an event; its final answer went to the lost socket.
            await ws.send_json(res(frame, {"runId": key, "status": "accepted"}))
            for event in agent_events(key, "agent:main:s", "late")[2:]:
                await ws.send_json(event)
        else:
            await ws.send_json(res(frame, final(key, "late")))

    fake.on_request = answer
    client = client_for(fake)
    await client.start()
    try:
        result = await client.request(
            "agent", {"idempotencyKey": "dlv_2"}, expect_final=True, idempotent=True
        )
    finally:
        await client.close()
    assert result["result"]["payloads"][0]["text"] == "late"
    assert sum(1 for _, f in fake.requests if f["method"] == "agent") == 3


async def test_socket_dropped_mid_plain_request_fails_clearly(fake: FakeGateway) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        await ws.close()

    fake.on_request = answer
    client = client_for(fake)
    await client.start()
    try:
        with pytest.raises(GatewayError, match="lost during wake; it may or may not") as caught:
            await client.request("wake", {"text": "t"})
    finally:
        await client.close()
    assert caught.value.retry is True


async def test_request_while_disconnected_waits_for_the_reconnect(fake: FakeGateway) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        await ws.send_json(res(frame, {"ok": True, "n": n}))

    fake.on_request = answer
    client = client_for(fake)
    await client.start()
    try:
        fake.down = True
        await fake.drop_all()
        pending = asyncio.create_task(client.request("send", {"idempotencyKey": "s"}))
        await asyncio.sleep(0.3)
        assert not pending.done()  # waiting, not dropped
        fake.down = False
        answer_ = await asyncio.wait_for(pending, 5)
    finally:
        await client.close()
    assert answer_["n"] == 2


async def test_request_while_disconnected_fails_after_the_bounded_wait(fake: FakeGateway) -> None:
    fake.down = True
    client = GatewayClient(
        fake.url, "right-token", options=ClientOptions(offline_wait=0.3, reconnect_initial=0.05)
    )
    await client.start()  # an unreachable gateway is not fatal at start
    try:
        with pytest.raises(GatewayError) as caught:
            await client.request("send", {})
    finally:
        await client.close()
    assert "not connected to the Clawdbot gateway" in str(caught.value)
    assert "waited 0.3s; last error:" in str(caught.value) and "HTTP 503" in str(caught.value)
    assert caught.value.retry is True


async def test_silent_gateway_is_detected_and_reconnected(fake: FakeGateway) -> None:
    fake.tick_ms = 100  # no tick will ever come
    client = client_for(fake, heartbeat=None)
    await client.start()
    try:
        for _ in range(100):
            if fake.connections >= 2 and client.connected:
                break
            await asyncio.sleep(0.05)
    finally:
        await client.close()
    assert fake.connections >= 2


# ------------------------------------------------------------------------- event mapping


async def _gateway(fake: FakeGateway, events: str = "ours") -> tuple[ClawdbotGateway, list[Event]]:
    emitted: list[Event] = []
    env = GatewayEnv(state_dir="/nonexistent", emit=emitted.append, logger=logging.getLogger("t"))
    options = {"url": fake.url, "token": "right-token", "events": events, "reconnectDelay": 0.02}
    gateway = ClawdbotGateway(options, env)
    await gateway.start()
    return gateway, emitted


def _scripted_run(foreign: bool) -> Handler:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        params = frame["params"]
        key = params["idempotencyKey"]
        await ws.send_json(res(frame, {"runId": key, "status": "accepted"}))
        if foreign:  # someone else's run reported on the same socket
            for event in agent_events("other-run", "agent:main:main", "theirs"):
                await ws.send_json(event)
        for event in agent_events(key, params["sessionKey"], "ours"):
            await ws.send_json(event)
        await ws.send_json(res(frame, final(key, "ours")))

    return answer


async def test_events_of_our_runs_are_mapped_without_a_duplicate_reply(fake: FakeGateway) -> None:
    fake.on_request = _scripted_run(foreign=True)
    gateway, emitted = await _gateway(fake)
    try:
        reply = await gateway.run_agent(
            agent_id="main", message="hi", session="hook:abc", idempotency_key="dlv_9"
        )
    finally:
        await gateway.close()
    assert (reply.text, reply.run_id, reply.agent_id) == ("ours", "dlv_9", "main")
    assert fake.requests[0][1]["params"]["sessionKey"] == "agent:main:hooks:hook:abc"
    kinds = [(e.type, e.session, e.causation) for e in emitted]
    assert kinds == [
        ("session_started", "hook:abc", "dlv_9"),
        ("session_ended", "hook:abc", "dlv_9"),
    ]  # no agent_response (the action publishes it) and nothing of the other run
    assert all(e.data["source"] == "clawdbot" for e in emitted)


async def test_all_events_maps_other_runs_too(fake: FakeGateway) -> None:
    fake.on_request = _scripted_run(foreign=True)
    gateway, emitted = await _gateway(fake, events="all")
    try:
        await gateway.run_agent(agent_id="main", message="hi", session="s1", idempotency_key="d1")
    finally:
        await gateway.close()
    theirs = [(e.type, e.data.get("text")) for e in emitted if e.data["runId"] == "other-run"]
    assert theirs == [
        ("session_started", None),
        ("agent_response", "theirs"),
        ("session_ended", None),
    ]
    reply = next(e for e in emitted if e.type == "agent_response")
    assert reply.session == "agent:main:main" and reply.causation is None


async def test_a_failed_run_is_one_error_event(fake: FakeGateway) -> None:
    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        key = frame["params"]["idempotencyKey"]
        await ws.send_json(res(frame, {"runId": key, "status": "accepted"}))
        base = {"runId": key, "sessionKey": "agent:main:s"}
        lifecycle = {**base, "stream": "lifecycle", "data": {"phase": "error", "error": "boom"}}
        chat = {**base, "state": "error", "errorMessage": "boom"}
        await ws.send_json({"type": "event", "event": "agent", "payload": lifecycle})
        await ws.send_json({"type": "event", "event": "chat", "payload": chat})
        error = {"code": "UNAVAILABLE", "message": "Error: boom"}
        await ws.send_json(res(frame, {"runId": key, "status": "error"}, ok=False, error=error))

    fake.on_request = answer
    gateway, emitted = await _gateway(fake)
    try:
        with pytest.raises(GatewayError, match="Clawdbot agent failed: Error: boom") as caught:
            await gateway.run_agent(agent_id="main", message="m", session="s", idempotency_key="e1")
    finally:
        await gateway.close()
    assert caught.value.retry is True
    errors = [e for e in emitted if e.type == "error"]
    assert len(errors) == 1 and errors[0].data["error"] == "boom"
    assert errors[0].causation == "e1"


def test_no_persistent_session_key_reaches_one_of_the_agents_own_sessions() -> None:
    """A persistent session's key may come from a payload: spelt like one of Clawdbot's own
    sessions (``main``, ``agent:devops:main``, a chat's) it still gets a session of its own
    under ``hooks:``; an ephemeral session keeps its ``hook:<uuid>``."""
    from clawdbot_webhooks.builtin.clawdbot.gateway import clawdbot_session_key
    from clawdbot_webhooks.sessions import ephemeral_session

    ephemeral = ephemeral_session()
    keys = ["main", "agent:devops:main", "telegram:dm:42", "hook:abc", "x", ephemeral]
    sent = {s: clawdbot_session_key("devops", s) for s in keys}
    assert sent == {
        "main": "agent:devops:hooks:main",
        "agent:devops:main": "agent:devops:hooks:agent:devops:main",
        "telegram:dm:42": "agent:devops:hooks:telegram:dm:42",
        "hook:abc": "agent:devops:hooks:hook:abc",
        "x": "agent:devops:hooks:x",
        ephemeral: f"agent:devops:{ephemeral}",
    }


async def test_an_odd_answer_while_reconnecting_is_one_failed_attempt(fake: FakeGateway) -> None:
    """Clawdbot's error ``details`` are free-form: a text there, answered to a reconnect,
    is a failed attempt like any other, and the next one connects (it ended reconnecting)."""

    async def answer(ws: web.WebSocketResponse, frame: dict[str, Any], n: int) -> None:
        await ws.send_json(res(frame, {"ok": True, "n": n}))

    fake.on_request = answer
    fake.odd_on = {2}
    client = client_for(fake)
    await client.start()
    try:
        await fake.drop_all()
        answer_ = await asyncio.wait_for(client.request("send", {"idempotencyKey": "s"}), 5)
    finally:
        await client.close()  # and it closes cleanly
    assert answer_["n"] == 3 and fake.connections == 3


async def test_connect_timeout_bounds_a_gateway_that_never_answers_the_upgrade() -> None:
    silent: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # takes the connection, says nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = GatewayClient(
        f"ws://127.0.0.1:{port}", "t", options=ClientOptions(connect_timeout=0.5)
    )
    try:
        # not reachable yet: start goes on (the gateway may come later), said so at once
        await asyncio.wait_for(client.start(), 30)
        assert client.last_error is not None and "timed out after 0.5s" in str(client.last_error)
    finally:
        await client.close()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()

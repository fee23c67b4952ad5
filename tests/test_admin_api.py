"""The admin API against a real server, store and sinks: auth, listings with filters and
pagination, replays, dead letters, the separate listener and the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from clawdbot_webhooks.config import ConfigError
from clawdbot_webhooks.web.admin import ADMIN_LISTENER, API_ROUTES
from clawdbot_webhooks.web.admin.openapi import spec
from tests.conftest import free_port

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ONCE = {"maxAttempts": 1, "initialDelay": 0.05, "jitter": False}


def config(sink_url: str, **admin: Any) -> dict[str, Any]:
    return {
        "admin": {"enabled": True, "token": TOKEN, **admin},
        "handlers": [
            {"id": "relay", "action": "forward", "url": sink_url, "retry": ONCE},
            {"id": "chat", "action": "run_agent", "agentId": "a", "template": "hi {{n}}"},
        ],
        "outgoing": [
            {"id": "hook", "url": sink_url, "events": ["message_received"], "retry": ONCE}
        ],
    }


async def call(srv: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    headers = {**AUTH, **kw.pop("headers", {})}
    base = kw.pop("base", srv.base)
    async with srv.session.request(method, base + path, headers=headers, **kw) as resp:
        return resp.status, await resp.json()


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def outgoing_status(srv: Any, delivery_id: str) -> str:
    row = await srv.runtime.store.get_outgoing(delivery_id)
    assert row is not None
    return row.status


async def test_admin_is_off_by_default(start_server) -> None:
    srv = await start_server({"handlers": []})
    async with srv.session.get(f"{srv.base}/admin/api/handlers", headers=AUTH) as resp:
        assert resp.status == 404


async def test_enabled_admin_needs_a_token(start_server) -> None:
    with pytest.raises(ConfigError) as caught:
        await start_server({"admin": {"enabled": True}})
    assert "webhooks.admin.token: required when the admin API is enabled" in caught.value.errors


async def test_auth_bearer_and_errors_are_json(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(config(sink.url))
    url = f"{srv.base}/admin/api/handlers"
    async with srv.session.get(url) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["ok"] is False
    async with srv.session.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body == {"ok": False, "error": "wrong admin token"}
        assert TOKEN not in await resp.text()
    status, body = await call(srv, "GET", "/admin/api/handlers")
    assert status == 200
    assert [h["id"] for h in body["items"]] == ["relay", "chat"]
    assert body["items"][0]["url_path"] == "/webhook/relay"
    status, body = await call(srv, "GET", "/admin/api/incoming?limit=0")
    assert status == 400 and "limit" in body["error"]
    status, body = await call(srv, "GET", "/admin/api/incoming?cursor=zz")
    assert status == 400 and "cursor" in body["error"]
    # made up, with numbers no column holds: 400 too, on every listing that pages
    for values in (["9" * 400, "x"], [1e308 * 10, "x"], [0, 2**70, "x"], [0, float("inf"), "x"]):
        text = json.dumps(values).replace('"' + "9" * 400 + '"', "9" * 400)
        cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        for path in (
            "/admin/api/incoming",
            "/admin/api/outgoing",
            "/admin/api/events",
            "/admin/api/sessions/s",
        ):
            status, body = await call(srv, "GET", f"{path}?cursor={cursor}")
            assert status == 400 and "cursor" in body["error"], (path, values, body)


async def test_list_filter_paginate_show(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(config(sink.url))
    ids = []
    for n in range(5):
        status, body = await srv.post("chat", {"n": n})
        assert status == 202
        ids.append(body["id"])
    assert (await srv.post("relay", {"x": 1}))[0] == 202
    await srv.idle()

    status, page = await call(srv, "GET", "/admin/api/incoming?hook=chat&limit=2")
    assert status == 200
    got = [i["id"] for i in page["items"]]
    while page["next_cursor"]:
        status, page = await call(
            srv, "GET", f"/admin/api/incoming?hook=chat&limit=2&cursor={page['next_cursor']}"
        )
        got += [i["id"] for i in page["items"]]
    assert got == list(reversed(ids))  # newest first, each once

    status, page = await call(srv, "GET", f"/admin/api/incoming?q={ids[2][-6:]}")
    assert [i["id"] for i in page["items"]] == [ids[2]]
    status, page = await call(srv, "GET", "/admin/api/incoming?status=done&since=1h")
    assert len(page["items"]) == 6
    status, page = await call(srv, "GET", "/admin/api/incoming?status=dead")
    assert page["items"] == []

    status, one = await call(srv, "GET", f"/admin/api/incoming/{ids[3]}")
    assert status == 200
    assert one["payload_json"] == {"n": 3}
    assert one["rendered"] == {"template": "hi 3"}
    assert one["status"] == "done"

    await until(lambda: _count_outgoing(srv, 5))
    status, page = await call(srv, "GET", "/admin/api/outgoing?subscription=hook")
    assert len(page["items"]) == 5
    first = page["items"][0]
    status, shown = await call(srv, "GET", f"/admin/api/outgoing/{first['id']}")
    assert shown["url"] == sink.url
    assert shown["history"][0]["status"] == 200
    status, body = await call(srv, "GET", "/admin/api/outgoing/out_missing")
    assert status == 404 and body["ok"] is False


async def _count_outgoing(srv: Any, n: int) -> bool:
    rows = await srv.runtime.store._do(
        lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE status='done'").fetchone()
    )
    return bool(rows[0] >= n)


async def test_replay_dead_letters_and_purge(start_server, make_sink) -> None:
    sink = await make_sink(default=500)
    srv = await start_server(config(sink.url))
    assert (await srv.post("chat", {"n": 1}))[0] == 202  # -> one outgoing delivery, dies
    assert (await srv.post("relay", {"x": 1}))[0] == 202  # forward to 500 -> dead incoming
    await srv.idle()

    async def two_dead() -> bool:
        return len(await srv.runtime.store.dead_letters()) == 2

    await until(two_dead)
    status, body = await call(srv, "GET", "/admin/api/dead-letters")
    kinds = {d["kind"]: d for d in body["items"]}
    assert set(kinds) == {"incoming", "outgoing"}
    out_id = kinds["outgoing"]["id"]

    # The endpoint is fixed; one click replays the outgoing dead letter.
    sink.default = 200
    before = len(sink.received)
    status, body = await call(srv, "POST", f"/admin/api/dead-letters/{out_id}/replay")
    assert status == 202 and body["replayed"] == [out_id]

    async def delivered() -> bool:
        return await outgoing_status(srv, out_id) == "done"

    await until(delivered)
    assert len(sink.received) > before
    status, shown = await call(srv, "GET", f"/admin/api/outgoing/{out_id}")
    # One attempt before the replay (ONCE), one after: both counted, as the history lists.
    assert len(shown["history"]) == 2 and shown["attempts"] == 2
    status, body = await call(srv, "POST", f"/admin/api/dead-letters/{out_id}/replay")
    assert status == 404

    # A finished delivery can be sent again through its own endpoint.
    status, body = await call(srv, "POST", f"/admin/api/outgoing/{out_id}/replay")
    assert status == 202 and body["status"] == "pending"
    await until(delivered)

    # a time that is a number but names no time, and a limit that is not a whole number
    for since in ("NaN", "inf", "-Infinity"):
        status, body = await call(
            srv, "POST", "/admin/api/dead-letters/replay", json={"all": True, "since": since}
        )
        assert status == 400 and "since" in body["error"], (since, body)
    for path in ("/admin/api/incoming?limit=1.9", "/admin/api/events?limit=1.5"):
        status, body = await call(srv, "GET", path)
        assert status == 400 and "limit" in body["error"], (path, body)
    status, body = await call(srv, "POST", "/admin/api/dead-letters/replay", json={"ids": 3})
    assert status == 400
    inc_id = kinds["incoming"]["id"]
    status, body = await call(srv, "DELETE", f"/admin/api/dead-letters/{inc_id}")
    assert status == 200 and body["purged"] == 1
    assert await srv.runtime.store.get_incoming(inc_id) is None
    status, body = await call(srv, "DELETE", "/admin/api/dead-letters")
    assert status == 200 and body["purged"] == 0


async def test_incoming_replay_runs_the_action_again(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(config(sink.url))
    status, body = await srv.post("relay", {"x": 1})
    delivery = body["id"]
    await srv.idle()
    await sink.wait_for(1)
    status, body = await call(srv, "POST", f"/admin/api/incoming/{delivery}/replay")
    assert status == 202
    await sink.wait_for(2)
    assert sink.received[1]["body"] == sink.received[0]["body"]
    await srv.idle()
    status, body = await call(srv, "POST", "/admin/api/incoming/dlv_nope/replay")
    assert status == 404


async def test_cookie_login_needs_csrf_header_for_changes(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(config(sink.url))
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(
            f"{srv.base}/admin/login", data={"token": "not-it"}, allow_redirects=False
        ) as resp:
            assert resp.status == 401
        async with browser.get(f"{srv.base}/admin/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/admin/login"
        async with browser.post(
            f"{srv.base}/admin/login", data={"token": TOKEN}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert TOKEN not in cookie
        async with browser.get(f"{srv.base}/admin/") as resp:
            assert resp.status == 200
            assert "Content-Security-Policy" in resp.headers
        async with browser.get(f"{srv.base}/admin/api/subscriptions") as resp:
            assert resp.status == 200
        url = f"{srv.base}/admin/api/dead-letters/replay"
        async with browser.post(url, json={"ids": []}) as resp:
            assert resp.status == 401  # a cross-site form could do this much: refused
        async with browser.post(
            url, json={"ids": []}, headers={"X-Requested-With": "clawdbot-admin"}
        ) as resp:
            assert resp.status == 202


async def test_admin_on_its_own_listener(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(config(sink.url, port=free_port()))
    listener = srv.server.app[ADMIN_LISTENER]
    admin_base = f"http://127.0.0.1:{listener.port}"
    status, body = await call(srv, "GET", "/admin/api/plugins", base=admin_base)
    assert status == 200 and any(p["name"] == "forward-action" for p in body["items"])
    async with srv.session.get(f"{srv.base}/admin/api/plugins", headers=AUTH) as resp:
        assert resp.status == 404  # not on the public listener
    status, body = await call(srv, "GET", "/admin/api/nothing", base=admin_base)
    assert status == 404 and body["ok"] is False


async def test_openapi_document_is_valid_and_complete(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(config(sink.url))
    status, served = await call(srv, "GET", "/admin/api/openapi.json")
    assert status == 200 and served == spec()
    validate(served)
    described = {
        (method.upper(), path)
        for path, item in served["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    registered = set()
    for route in srv.server.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/admin/api") and route.method != "HEAD":
            registered.add((route.method, path))
    assert registered == described
    assert {(m, p) for m, p, _ in API_ROUTES} <= described

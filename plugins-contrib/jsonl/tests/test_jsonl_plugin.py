"""clawdbot-webhooks-jsonl: the transport on its own (concurrent appends, failures) and end to
end through an outgoing subscription (delivered, signed, dead-lettered)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import clawdbot_webhooks_jsonl
import pytest
from clawdbot_webhooks_hookspecs import Event, OutgoingRequest
from clawdbot_webhooks_jsonl import JsonlTransport, path_of

from clawdbot_webhooks.config import ConfigError
from clawdbot_webhooks.outgoing.outbox import outbox_id
from clawdbot_webhooks.testing import Served, serve

PLUGIN = ("jsonl", clawdbot_webhooks_jsonl)
SECRET = "whsec_" + base64.b64encode(b"jsonl-transport-test-key").decode()
FAST = {"maxAttempts": 2, "initialDelay": 0.05, "maxDelay": 0.1, "jitter": False}


def request(url: str, n: int, size: int = 0) -> OutgoingRequest:
    body = json.dumps({"n": n, "pad": "x" * size}).encode()
    return OutgoingRequest(url, "POST", {"webhook-id": f"evt_{n}"}, body, 5.0, f"out_{n}", "s1")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_only_absolute_local_file_urls() -> None:
    assert path_of("file:///var/log/x.jsonl") == Path("/var/log/x.jsonl")
    assert path_of("file://localhost/tmp/a%20b.jsonl") == Path("/tmp/a b.jsonl")
    for bad in ("http://x/y", "file://otherhost/x", "file:///", "file:relative.jsonl"):
        with pytest.raises(ValueError):
            path_of(bad)


async def test_concurrent_sends_each_write_one_whole_line(tmp_path: Path) -> None:
    target = tmp_path / "logs" / "out.jsonl"  # the directory is created on first use
    url = target.as_uri()
    # Two transports (two runtimes, as two processes would be) and large lines, so writes that
    # interleaved would show as broken JSON.
    first, second = JsonlTransport(), JsonlTransport()
    sends = [(first if n % 2 else second).send(request(url, n, size=70_000)) for n in range(60)]
    responses = await asyncio.gather(*sends)
    assert all(r.status == 200 and r.error is None for r in responses)
    written = lines(target)
    assert sorted(w["body"]["n"] for w in written) == list(range(60))
    assert {w["subscription"] for w in written} == {"s1"}
    assert written[0]["headers"]["webhook-id"].startswith("evt_")
    assert target.stat().st_mode & 0o777 == 0o600


async def test_failures_are_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    transport = JsonlTransport()
    response = await transport.send(request((blocker / "x.jsonl").as_uri(), 1))
    assert response.status is None and "cannot append" in (response.error or "")
    response = await transport.send(request("http://127.0.0.1:9/x", 1))
    assert response.status is None and "file://" in (response.error or "")


async def _outgoing_status(srv: Served, row_id: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await srv.runtime.store.get_outgoing(row_id)
        if row is not None and row.status != "pending":
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"outgoing {row_id} still pending")


async def test_subscription_end_to_end(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    blocked = tmp_path / "file"
    blocked.write_text("")
    config = {
        "handlers": [{"id": "ask", "action": "run_agent", "agentId": "a", "template": "hi"}],
        "outgoing": [
            {
                "id": "log",
                "url": target.as_uri(),
                "events": ["agent_response"],
                "transport": "jsonl",
                "secret": SECRET,
            },
            {
                "id": "broken",
                "url": (blocked / "x.jsonl").as_uri(),
                "events": ["agent_response"],
                "transport": "jsonl",
                "retry": FAST,
            },
        ],
    }
    async with serve(config, [PLUGIN], state_dir=tmp_path / "state") as srv:
        status, _ = await srv.post("ask", {"q": 1})
        assert status == 202
        await srv.idle()
        deadline = time.monotonic() + 10
        # Until the line is whole: the file exists a moment before it is written.
        while time.monotonic() < deadline and not (
            target.exists() and target.read_text().endswith("\n")
        ):
            await asyncio.sleep(0.02)
        [line] = lines(target)
        body = line["body"]
        assert body["type"] == "agent_response" and body["response"]["agentId"] == "a"
        assert line["headers"]["webhook-signature"].startswith("v1,")
        ok = await _outgoing_status(srv, outbox_id(body["id"], "log"))
        assert ok.status == "done"
        # The unwritable one went down the failure path: retried, then dead-lettered.
        dead = await _outgoing_status(srv, outbox_id(body["id"], "broken"))
        assert dead.status == "dead" and dead.attempts == 2
        assert "cannot append" in (dead.last_error or "")


async def test_check_refuses_a_non_file_url_for_jsonl(tmp_path: Path) -> None:
    config = {
        "outgoing": [
            {"id": "log", "url": "https://example.invalid/x", "events": ["*"], "transport": "jsonl"}
        ]
    }
    with pytest.raises(ConfigError) as caught:
        async with serve(config, [PLUGIN], state_dir=tmp_path / "state"):
            pass
    assert caught.value.errors == [
        "webhooks.outgoing[0].url: transport 'jsonl' sends to file:// URLs"
    ]
    # The http transport still wants an http(s) URL.
    config = {"outgoing": [{"id": "h", "url": "file:///tmp/x", "events": ["*"]}]}
    with pytest.raises(ConfigError) as caught:
        async with serve(config, [PLUGIN], state_dir=tmp_path / "state"):
            pass
    assert caught.value.errors[0].startswith("webhooks.outgoing[0].url:")


def test_event_payload_round_trips(tmp_path: Path) -> None:
    # What the file holds is exactly what an HTTP subscriber would have received.
    event = Event("session_started", {"hook": "h"}, session="s")
    target = tmp_path / "e.jsonl"
    req = OutgoingRequest(
        target.as_uri(), "POST", {}, json.dumps(event.to_payload()).encode(), 1.0, "o", "s"
    )
    response = asyncio.run(JsonlTransport().send(req))
    assert response.status == 200
    assert lines(target)[0]["body"] == event.to_payload()


async def test_conforms(tmp_path: Path) -> None:
    from clawdbot_webhooks.testing import assert_plugin_conforms

    target = tmp_path / "out" / "events.jsonl"
    checked = await assert_plugin_conforms(
        ("jsonl", clawdbot_webhooks_jsonl),
        transports={"jsonl": target.as_uri()},
        state_dir=tmp_path / "state",
    )
    assert checked.transports == {"jsonl": "done"}
    [line] = [json.loads(text) for text in target.read_text().splitlines()]
    assert line["body"]["type"] == "message_received"

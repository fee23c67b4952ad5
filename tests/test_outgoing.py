"""Outgoing deliveries against real local HTTP sinks: retries, status handling, isolation,
per-session order, the circuit breaker and loop-free error events."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import Event
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from clawdbot_webhooks.config import ConfigError
from clawdbot_webhooks.outgoing.outbox import outbox_id
from clawdbot_webhooks.outgoing.verdicts import retry_after_seconds
from clawdbot_webhooks.store import DeliveryQuery
from clawdbot_webhooks.testing import serve
from tests.conftest import with_storage

SECRET = "whsec_" + base64.b64encode(b"the-outgoing-secret-key-bytes").decode()
FAST = {"maxAttempts": 3, "initialDelay": 0.05, "maxDelay": 0.2, "jitter": False}


def sub(url: str, **extra: Any) -> dict[str, Any]:
    return {"id": "s1", "url": url, "events": ["*"], "retry": FAST, **extra}


async def settled(srv: Any, timeout: float = 10.0) -> dict[str, str]:
    """Wait until no outgoing row is pending; returns id -> status."""
    deadline = time.monotonic() + timeout
    while True:
        listed = await srv.runtime.store.list_deliveries("outgoing", DeliveryQuery(limit=10_000))
        rows = [(d.id, d.status) for d in listed]
        if rows and all(status != "pending" for _, status in rows):
            await srv.runtime.outbox._finisher.drain()
            return dict(rows)
        if time.monotonic() > deadline:
            raise AssertionError(f"outgoing rows still pending: {rows}")
        await asyncio.sleep(0.02)


async def test_third_attempt_delivers_same_id_signed(start_server, make_sink) -> None:
    sink = await make_sink(script=[500, 503])
    srv = await start_server({"outgoing": [sub(sink.url, secret=SECRET)]})
    event = Event("agent_response", {"text": "hi", "agentId": "a", "runId": "r"}, session="s")
    await srv.runtime.bus.publish(event)
    # publish returned: the row is committed already
    row = await srv.runtime.store.get_outgoing(outbox_id(event.id, "s1"))
    assert row is not None
    await sink.wait_for(3)
    assert await settled(srv) == {row.id: "done"}
    bodies = sink.json_bodies()
    assert [b["id"] for b in bodies] == [event.id] * 3
    assert bodies[2] == event.to_payload()
    for got in sink.received:
        assert got["headers"]["webhook-id"] == event.id
        Webhook(SECRET).verify(got["body"], got["headers"])
    attempts = await srv.runtime.store.attempts(row.id)
    assert [a.status for a in attempts] == [500, 503, 200]
    assert attempts[0].response == "nope" and attempts[0].error == "HTTP 500"


async def test_publishing_twice_delivers_once(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server({"outgoing": [sub(sink.url)]})
    event = Event("session_started", {"hook": "h"}, session="s")
    await srv.runtime.bus.publish(event)
    await srv.runtime.bus.publish(event)
    await settled(srv)
    await asyncio.sleep(0.2)
    assert len(sink.received) == 1


async def test_retry_after_is_honoured(start_server, make_sink) -> None:
    sink = await make_sink(script=[429], headers={"Retry-After": "1"})
    srv = await start_server({"outgoing": [sub(sink.url)]})
    await srv.runtime.bus.publish(Event("error", {"x": 1}))
    await sink.wait_for(2)
    gap = sink.received[1]["at"] - sink.received[0]["at"]
    assert gap >= 0.9  # not the 0.05 s of the policy


def test_retry_after_http_date() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None


@given(
    value=st.text()
    | st.from_regex(r"\A\s*[0-9\u00b2\u00b3\u00b9\u0660-\u0669\uff10-\uff19]{1,8}\s*\Z")
)
def test_retry_after_of_any_text_is_a_delay_or_nothing(value: str) -> None:
    """Whatever a sink answers in ``Retry-After`` (superscript or other non-ASCII digits
    among it), it is a delay of zero or more seconds or no delay at all: never an error that
    would stop the attempt from being recorded."""
    delay = retry_after_seconds(value, now=0.0)
    assert delay is None or delay >= 0.0
    if value.strip().isascii() and value.strip().isdigit():
        assert delay == float(value.strip())


@pytest.mark.parametrize(
    ("script", "extra", "requests", "status"),
    [
        ([410], {}, 1, "dead"),  # Gone: stop at once
        ([400], {}, 1, "dead"),  # other 4xx: not retried
        ([404, 404], {"retryOn4xx": True}, 3, "done"),
        ([302], {}, 1, "dead"),  # redirects are not followed, and not retried
        ([408, 500], {}, 3, "done"),
    ],
)
async def test_status_handling(start_server, make_sink, script, extra, requests, status) -> None:
    sink = await make_sink(script=list(script), headers={"Location": "/elsewhere"})
    srv = await start_server({"outgoing": [sub(sink.url, **extra)]})
    await srv.runtime.bus.publish(Event("session_ended", {"reason": "completed"}, session="x"))
    states = await settled(srv)
    assert list(states.values()) == [status]
    await asyncio.sleep(0.15)
    assert len(sink.received) == requests
    assert all(r["path"] == "/in" for r in sink.received)


async def test_timeout_and_refused_connection_are_retried(start_server, make_sink) -> None:
    slow = await make_sink(delay=0.5)

    # Bound and never listening: every connection to it is refused, and nothing else can
    # take the port meanwhile.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{blocker.getsockname()[1]}/in"
        srv = await start_server(
            {
                "outgoing": [
                    sub(slow.url, id="slow", timeout=0.1),
                    sub(closed, id="closed"),
                ]
            }
        )
        event = Event("error", {"x": 1})
        await srv.runtime.bus.publish(event)
        states = await settled(srv)
        assert set(states.values()) == {"dead"}
        for name in ("slow", "closed"):
            attempts = await srv.runtime.store.attempts(outbox_id(event.id, name))
            assert len(attempts) == 3 and all(a.status is None for a in attempts)
            assert all(a.error for a in attempts)
        assert (
            "timed out" in (await srv.runtime.store.attempts(outbox_id(event.id, "slow")))[0].error
        )


async def test_hung_sink_does_not_delay_a_healthy_one(start_server, make_sink) -> None:
    hung = await make_sink(hang=True)
    healthy = await make_sink()
    srv = await start_server(
        {
            "incoming": {"shutdownTimeout": 0.1},
            "outgoing": [
                sub(hung.url, id="hung", timeout=30, concurrency=2),
                sub(healthy.url, id="healthy", concurrency=2),
            ],
        }
    )
    events = [Event("message_received", {"n": i}, session=f"s{i % 3}") for i in range(30)]
    await asyncio.gather(*(srv.runtime.bus.publish(e) for e in events))
    await healthy.wait_for(30)
    got = {b["id"] for b in healthy.json_bodies()}
    assert got == {e.id for e in events}
    # Meanwhile the hung endpoint has not answered a single attempt.
    hung_listed = await srv.runtime.store.list_deliveries(
        "outgoing", DeliveryQuery(target="hung", limit=1000)
    )
    hung_rows = sum(1 for d in hung_listed if d.attempts == 0)
    assert hung_rows == 30
    assert 1 <= len(hung.received) <= 2  # its concurrency limit, one per waiting session


async def test_per_session_order_with_many_sessions(start_server, make_sink) -> None:
    # Every 5th request fails, so retries interleave with fresh deliveries.
    sink = await make_sink(script=[200, 200, 200, 200, 500] * 60)
    retry = {"maxAttempts": 20, "initialDelay": 0.01, "maxDelay": 0.05, "jitter": True}
    srv = await start_server({"outgoing": [sub(sink.url, retry=retry, concurrency=8)]})

    async def session(s: int) -> None:
        for n in range(10):
            await srv.runtime.bus.publish(Event("message_received", {"n": n}, session=f"sess-{s}"))

    await asyncio.gather(*(session(s) for s in range(40)))
    states = await settled(srv, timeout=30)
    assert set(states.values()) == {"done"} and len(states) == 400
    seen: dict[str, list[int]] = {}
    for body in sink.json_bodies():
        seen.setdefault(body["session"], []).append(body["message"]["n"])
    assert len(seen) == 40
    for numbers in seen.values():
        # Attempts may repeat an event, but never go back to an earlier one.
        assert numbers == sorted(numbers) and sorted(set(numbers)) == list(range(10))


async def test_a_lane_keeps_its_order_across_a_restart(
    state_dir: Path, storage: dict[str, Any] | None, make_sink
) -> None:
    """A delivery waiting for its retry when the server stops is still the first of its
    lane after the start: a new event of the same session waits behind it, not past it."""
    sink = await make_sink(script=[503])
    retry = {"maxAttempts": 5, "initialDelay": 1.5, "maxDelay": 1.5, "jitter": False}
    config = with_storage({"outgoing": [sub(sink.url, retry=retry)]}, storage)
    async with serve(config, state_dir=state_dir) as srv:
        await srv.runtime.bus.publish(Event("message_received", {"n": 1}, session="S"))
        await sink.wait_for(1)  # answered 503: its retry is stored, 1.5 s away
        await srv.runtime.outbox._finisher.drain()
    async with serve(config, state_dir=state_dir) as srv:
        await srv.runtime.bus.publish(Event("message_received", {"n": 2}, session="S"))
        states = await settled(srv, timeout=10)
    assert set(states.values()) == {"done"}
    sent = [body["message"]["n"] for body in sink.json_bodies()]
    assert sent == [1, 1, 2]


async def test_circuit_breaker_pauses_and_probes(start_server, make_sink) -> None:
    sink = await make_sink(default=503)
    retry = {"maxAttempts": 100, "initialDelay": 0.01, "maxDelay": 0.01, "jitter": False}
    srv = await start_server(
        {
            "outgoing": [
                sub(
                    sink.url,
                    retry=retry,
                    concurrency=4,
                    circuitBreaker={"threshold": 3, "cooldown": 0.4},
                )
            ]
        }
    )
    events = [Event("error", {"n": i}) for i in range(8)]
    await asyncio.gather(*(srv.runtime.bus.publish(e) for e in events))
    await sink.wait_for(3)
    await asyncio.sleep(1.0)
    # Without the breaker this would be hundreds of requests; open, it lets one probe through
    # per cooldown (plus the attempts already in flight when it opened).
    assert len(sink.received) <= 3 + 4 + 3
    count = len(sink.received)
    sink.default = 200
    states = await settled(srv, timeout=10)
    assert set(states.values()) == {"done"}
    assert {b["id"] for b in sink.json_bodies()[count:]} == {e.id for e in events}


async def test_error_events_do_not_loop(start_server, make_sink) -> None:
    a = await make_sink(default=500)
    b = await make_sink(default=500)
    one = {"maxAttempts": 1}
    srv = await start_server(
        {"outgoing": [sub(a.url, id="a", retry=one), sub(b.url, id="b", retry=one)]}
    )
    seen: list[Event] = []
    original = srv.runtime.outbox.record

    async def spy(event: Event, source: str) -> None:
        seen.append(event)
        await original(event, source)

    srv.runtime.bus._durable[0] = spy
    await srv.runtime.bus.publish(Event("agent_response", {"text": "x"}, session="s"))
    states = await settled(srv)
    await asyncio.sleep(0.3)
    states = await settled(srv)
    # The event to a and b, a's failure to b, b's failure to a, and nothing after that.
    assert len(states) == 4 and set(states.values()) == {"dead"}
    errors = [e for e in seen if e.type == "error"]
    assert len(errors) == 4  # two about the event, two about the error events: not delivered
    a_types = [json.loads(r["body"])["type"] for r in a.received]
    assert sorted(a_types) == ["agent_response", "error"]
    a_error = next(
        json.loads(r["body"]) for r in a.received if json.loads(r["body"])["type"] == "error"
    )
    assert a_error["data"]["subscription"] == "b"  # never a's own failure


async def test_custom_template_and_headers(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(
        {
            "outgoing": [
                sub(
                    sink.url,
                    events=["agent_response"],
                    template="{{ type }}: {{ response.text }} ({{ event.session }})",
                    headers={"X-Team": "ops"},
                )
            ]
        }
    )
    await srv.runtime.bus.publish(Event("message_received", {"text": "ignored"}, session="z"))
    await srv.runtime.bus.publish(Event("agent_response", {"text": "hello"}, session="z"))
    await sink.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got["body"] == b"agent_response: hello (z)"
    assert got["headers"]["X-Team"] == "ops"
    assert got["headers"]["Content-Type"].startswith("text/plain")


async def test_a_dead_letter_of_a_failed_template_is_sent_with_the_fixed_one(
    state_dir: Path, storage: dict[str, Any] | None, make_sink
) -> None:
    """A subscription's template that fails for an event makes its delivery a dead letter
    at once; replayed after the template is fixed, it is sent as the fixed template renders
    it, not as the event's plain JSON."""
    sink = await make_sink()

    def config(template: str) -> dict[str, Any]:
        subscription = sub(sink.url, events=["session_ended"], template=template)
        return with_storage({"strictTemplates": True, "outgoing": [subscription]}, storage)

    broken = '{"text": "ended: {{ data.reason }}"}'
    async with serve(config(broken), state_dir=state_dir) as srv:
        await srv.runtime.bus.publish(Event("session_ended", {"n": 1}, session="s"))
        states = await settled(srv)
        [(delivery, state)] = states.items()
        assert state == "dead"
        [letter] = await srv.runtime.store.dead_letters()
        assert letter.error is not None and "template failed" in letter.error
    assert sink.received == []
    fixed = '{"text": "ended: {{ data.reason | default(\'?\') }}"}'
    async with serve(config(fixed), state_dir=state_dir) as srv:
        assert await srv.runtime.store.revive([delivery]) == [delivery]
        srv.runtime.outbox.wake()
        await sink.wait_for(1)
        assert await settled(srv) == {delivery: "done"}
    assert sink.json_bodies() == [{"text": "ended: ?"}]
    assert sink.received[0]["headers"]["Content-Type"] == "application/json"


async def test_a_failing_template_leaves_the_endpoints_breaker_alone(
    start_server, make_sink
) -> None:
    """A body the template cannot make was never sent: its dead letter neither waits for an
    open breaker nor counts as the endpoint answering (which closed the breaker)."""
    sink = await make_sink(default=503)
    subscription = sub(
        sink.url,
        template='{"t": "{{ data.reason }}"}',
        retry={"maxAttempts": 1},
        circuitBreaker={"threshold": 2, "cooldown": 30},
    )
    srv = await start_server({"strictTemplates": True, "outgoing": [subscription]})
    for n in range(2):
        await srv.runtime.bus.publish(Event("session_ended", {"reason": str(n)}, session="s"))
    await sink.wait_for(2)
    breaker = srv.runtime.outbox.breakers.of(srv.runtime.outbox._subs["s1"])
    await settled(srv)
    assert breaker.state == "open"
    await srv.runtime.bus.publish(Event("session_ended", {"n": 3}, session="s"))
    states = await settled(srv, timeout=5)  # not the breaker's 30 s
    assert list(states.values()) == ["dead"] * 3
    assert breaker.state == "open" and breaker.failures == 2
    assert len(sink.received) == 2


async def test_unknown_event_name_is_a_config_error_with_key_path(start_server) -> None:
    with pytest.raises(ConfigError) as info:
        await start_server(
            {"outgoing": [sub("http://127.0.0.1:9/in", events=["agent_response", "nope"])]}
        )
    assert any(e.startswith("webhooks.outgoing[0].events[1]:") for e in info.value.errors)


async def test_a_reload_changes_the_circuit_breaker_of_an_endpoint_in_use() -> None:
    """A breaker made before a reload takes the new threshold and cooldown, keeping its
    count of failures: lowered to 1, the next failure opens it."""
    from clawdbot_webhooks.config import build_settings
    from clawdbot_webhooks.outgoing.breaker import Breakers
    from clawdbot_webhooks.plugins import load_plugins

    def subscriptions(threshold: int, cooldown: float) -> Any:
        breaker = {"threshold": threshold, "cooldown": cooldown}
        raw = {"outgoing": [sub("http://127.0.0.1:9/in", circuitBreaker=breaker)]}
        return build_settings(raw, load_plugins(), None).outgoing

    before = subscriptions(1000, 30)
    breakers = Breakers(before)
    breaker = breakers.of(before[0])
    for _ in range(3):
        breaker.record(False)
    assert breakers.states() == {"s1": "closed"}
    after = subscriptions(1, 5)
    breakers.update(after)
    assert breakers.of(after[0]) is breaker and breaker.cooldown == 5
    breaker.record(False)
    assert breakers.states() == {"s1": "open"}

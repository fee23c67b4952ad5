"""``/metrics`` scraped and parsed: the counts match what the test did. Also ``/readyz``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

FAST = {"maxAttempts": 2, "initialDelay": 0.05, "maxDelay": 0.1, "jitter": False}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def outgoing_settled(srv: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = await srv.runtime.store._do(
            lambda c: c.execute("SELECT status FROM outbox").fetchall()
        )
        if rows and all(status != "pending" for (status,) in rows):
            await srv.runtime.outbox._finisher.drain()
            return
        assert time.monotonic() < deadline, f"outgoing rows still pending: {rows}"
        await asyncio.sleep(0.02)


async def scrape(srv: Any) -> tuple[str, dict[Any, float]]:
    async with srv.session.get(f"{srv.base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return text, samples(text)


async def test_metrics_match_what_happened(start_server, make_sink) -> None:
    good = await make_sink()
    down = await make_sink(default=500)
    broken = await make_sink(default=500)
    srv = await start_server(
        {
            "handlers": [
                {"id": "ok", "action": "run_agent", "agentId": "a", "template": "hi {{n}}"},
                {
                    "id": "sec",
                    "action": "run_agent",
                    "agentId": "a",
                    "template": "x",
                    "secret": "s3cr3t-value",
                },
                {"id": "bad", "action": "forward", "url": broken.url, "retry": FAST},
            ],
            "outgoing": [
                {"id": "good", "url": good.url, "events": ["message_received"], "retry": FAST},
                {"id": "down", "url": down.url, "events": ["message_received"], "retry": FAST},
            ],
        }
    )
    for n in range(3):
        assert (await srv.post("ok", {"n": n}))[0] == 202
    assert (await srv.post("sec", {}))[0] == 401
    assert (await srv.post("nope", {}))[0] == 404
    assert (await srv.post("bad", {}))[0] == 202
    async with srv.session.get(f"{srv.base}/webhook/ok") as resp:
        assert resp.status == 405
    await srv.idle()
    await outgoing_settled(srv)

    text, found = await scrape(srv)
    requests = "clawdbot_webhooks_incoming_requests_total"
    assert value(found, requests, hook="ok", code="202") == 3
    assert value(found, requests, hook="ok", code="405") == 1
    assert value(found, requests, hook="sec", code="401") == 1
    assert value(found, requests, hook="_unknown", code="404") == 1
    assert value(found, requests, hook="bad", code="202") == 1
    # the hook name someone made up is not a label value
    assert 'hook="nope"' not in text

    actions = "clawdbot_webhooks_action_duration_seconds_count"
    assert value(found, actions, hook="ok", outcome="done") == 3
    assert value(found, actions, hook="bad", outcome="retry") == 1
    assert value(found, actions, hook="bad", outcome="dead") == 1
    assert (
        value(found, "clawdbot_webhooks_action_duration_seconds_sum", hook="ok", outcome="done") > 0
    )

    out = "clawdbot_webhooks_outgoing_deliveries_total"
    assert value(found, out, subscription="good", outcome="delivered") == 3
    assert value(found, out, subscription="down", outcome="retry") == 3
    assert value(found, out, subscription="down", outcome="dead") == 3
    assert (
        value(found, "clawdbot_webhooks_outgoing_duration_seconds_count", subscription="down") == 6
    )

    assert value(found, "clawdbot_webhooks_dead_letters", direction="outgoing") == 3
    assert value(found, "clawdbot_webhooks_dead_letters", direction="incoming") == 1
    assert value(found, "clawdbot_webhooks_retry_queue_depth", direction="incoming") == 0
    assert value(found, "clawdbot_webhooks_retry_queue_depth", direction="outgoing") == 0
    assert value(found, "clawdbot_webhooks_gateway_up", type="local") == 1
    assert ("clawdbot_webhooks_circuit_state", (("subscription", "down"),)) in found


async def test_retry_queue_depth_counts_waiting_retries(start_server, make_sink) -> None:
    down = await make_sink(default=503)
    slow = {"maxAttempts": 5, "initialDelay": 30, "jitter": False}
    srv = await start_server(
        {
            "handlers": [{"id": "ok", "action": "run_agent", "agentId": "a", "template": "x"}],
            "outgoing": [{"id": "down", "url": down.url, "events": ["*"], "retry": slow}],
        }
    )
    assert (await srv.post("ok", {}))[0] == 202
    await srv.idle()
    deadline = time.monotonic() + 10
    while True:
        _, found = await scrape(srv)
        if value(found, "clawdbot_webhooks_retry_queue_depth", direction="outgoing") >= 1:
            break
        assert time.monotonic() < deadline, "the retry never showed in the queue depth"
        await asyncio.sleep(0.5)


async def test_each_server_has_its_own_registry(start_server) -> None:
    handler = {"id": "ok", "action": "run_agent", "agentId": "a", "template": "x"}
    one = await start_server({"handlers": [handler]})
    two = await start_server(
        {"handlers": [handler], "stateDir": str(one.runtime.settings.state_dir) + "2"}
    )
    await one.post("ok", {})
    _, first = await scrape(one)
    _, second = await scrape(two)
    name = "clawdbot_webhooks_incoming_requests_total"
    assert value(first, name, hook="ok", code="202") == 1
    assert value(second, name, hook="ok", code="202") == 0


async def test_readyz_reports_store_and_gateway(start_server) -> None:
    srv = await start_server({"handlers": []})
    async with srv.session.get(f"{srv.base}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True, "checks": {"store": "ok", "gateway": "ok"}}
    async with srv.session.get(f"{srv.base}/healthz") as resp:
        assert resp.status == 200


class SlowGateway:
    """A gateway without ``ready``: readiness probes it (with a timeout), and caches."""

    def __init__(self) -> None:
        self.probes = 0
        self.fail = True

    async def probe(self) -> str:
        self.probes += 1
        if self.fail:
            raise RuntimeError("connection refused")
        return "ok"


async def test_gateway_probe_is_cached_and_reported() -> None:
    from clawdbot_webhooks.metrics import GatewayHealth

    gw = SlowGateway()
    health = GatewayHealth(gw)
    ok, detail = await health.check()
    assert not ok and "connection refused" in detail
    assert (await health.check())[0] is False
    assert gw.probes == 1  # cached
    assert health.last is False


def test_tallies_expose_what_prometheus_client_would() -> None:
    """The plain-dictionary tallies render exactly as prometheus_client's own Histogram and
    Counter do for the same observations (bucket edges included), without ``_created``."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from clawdbot_webhooks.metrics import BUCKETS, Metrics

    ours, theirs = Metrics(), CollectorRegistry()
    histogram = Histogram(
        "clawdbot_webhooks_action_duration_seconds",
        "-",
        ["hook", "outcome"],
        buckets=BUCKETS,
        registry=theirs,
    )
    counter = Counter("clawdbot_webhooks_incoming_requests", "-", ["hook", "code"], registry=theirs)
    for seconds in (0.0, 0.005, 0.0050001, 0.3, 1, 300, 301, 60):
        ours.action("a", "done", seconds)
        histogram.labels("a", "done").observe(seconds)
    ours.action("b", "dead", 2.5)
    histogram.labels("b", "dead").observe(2.5)
    for code in (202, 202, 401):
        ours.request("a", code)
        counter.labels("a", str(code)).inc()

    def samples(registry: CollectorRegistry, prefixes: tuple[str, ...]) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return sorted(
            line for line in lines if line.startswith(prefixes) and "_created" not in line
        )

    names = ("clawdbot_webhooks_action_duration_seconds", "clawdbot_webhooks_incoming_requests")
    assert samples(ours.registry, names) == samples(theirs, names)
    assert len(samples(theirs, names)) == 2 * (len(BUCKETS) + 3) + 2


class BrokenVerifier:
    """A verifier plugin with a bug past authentication: its ``present`` raises. (One that
    raises in ``verify`` refuses the request: 401.)"""

    from clawdbot_webhooks_hookspecs import hookimpl

    @hookimpl
    def register_verifiers(self, register):  # type: ignore[no-untyped-def]
        from marshmallow import Schema

        class Broken:
            class schema(Schema):
                pass

            def verify(self, request, options):  # type: ignore[no-untyped-def]
                return None

            def present(self, payload, options):  # type: ignore[no-untyped-def]
                raise RuntimeError("a bug in the plugin")

        register("broken", Broken())


async def test_a_request_that_fails_unexpectedly_is_counted_as_500(start_server) -> None:
    handler = {"id": "b", "action": "run_agent", "agentId": "a", "template": "x"}
    srv = await start_server(
        {"handlers": [{**handler, "verify": {"type": "broken"}}]},
        plugins=[("broken", BrokenVerifier())],
    )
    async with srv.session.post(f"{srv.base}/webhook/b", json={}) as resp:
        assert resp.status == 500
    assert await srv.runtime.store.count_incoming() == 0  # nothing was accepted
    _, found = await scrape(srv)
    requests = "clawdbot_webhooks_incoming_requests_total"
    assert value(found, requests, hook="b", code="500") == 1

"""Rate limits per handler and per client address, the authentication-failure throttle, and
the per-handler cap on concurrent actions — with nothing accepted ever lost."""

from __future__ import annotations

import asyncio
from typing import Any

from clawdbot_webhooks_hookspecs import ActionContext, VerificationError, hookimpl

from clawdbot_webhooks.config import RateLimit
from clawdbot_webhooks.web.ratelimit import BucketsByKey, FailureThrottle, TokenBucket, retry_after

# ------------------------------------------------------------------------------ units


def test_token_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    bucket = TokenBucket.from_config(RateLimit(requests=2, per=10.0, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 5.0  # one token every 5 s
    assert bucket.take(5.0) == 0.0
    assert bucket.take(1000.0) == 0.0
    assert bucket.tokens == 2.0  # refilled to the burst (3), one taken


def test_buckets_by_key_are_separate_and_bounded() -> None:
    buckets = BucketsByKey(RateLimit(requests=1, per=60.0), max_keys=3)
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) > 0
    assert buckets.take("b", 0.0) == 0.0
    for key in "cdefg":
        buckets.take(key, 0.0)
    assert len(buckets) == 3


def test_failure_throttle_blocks_until_the_oldest_failure_leaves_the_window() -> None:
    throttle = FailureThrottle(max_failures=3, window=60.0)
    for t in (0.0, 1.0, 2.0):
        assert throttle.blocked_for("ip", t) == 0.0
        throttle.failed("ip", t)
    assert throttle.blocked_for("ip", 10.0) == 50.0
    assert throttle.blocked_for("other", 10.0) == 0.0
    assert throttle.blocked_for("ip", 60.5) == 0.0  # the failure at 0.0 has left the window
    assert retry_after(0.2) == "1" and retry_after(49.1) == "50"


# --------------------------------------------------------------------------- over HTTP


def _hook(**more: Any) -> dict[str, Any]:
    return {
        "id": "h",
        "action": "send_message",
        "target": {"channel": "local", "peer": "me"},
        "template": "{{ n }}",
        **more,
    }


def _assert_429(status: int, body: Any) -> None:
    assert status == 429
    assert body["ok"] is False and isinstance(body["error"], str)


async def _post(srv: Any, hook: str, payload: Any, headers: dict[str, str] | None = None) -> Any:
    async with srv.session.post(
        f"{srv.base}/webhook/{hook}", json=payload, headers=headers or {}
    ) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.json()


async def test_handler_rate_limit_answers_429_and_loses_nothing_accepted(start_server) -> None:
    srv = await start_server({"handlers": [_hook(rateLimit={"requests": 2, "per": 60})]})
    answers = [await _post(srv, "h", {"n": n}) for n in range(4)]
    assert [a[0] for a in answers] == [202, 202, 429, 429]
    for status, after, body in answers[2:]:
        _assert_429(status, body)
        assert after is not None and 1 <= int(after) <= 30
    await srv.idle()
    accepted = [a[2]["id"] for a in answers[:2]]
    for delivery_id in accepted:
        record = await srv.runtime.store.get_incoming(delivery_id)
        assert record is not None and record.status == "done"
    assert await srv.runtime.store.count_incoming() == 2  # the refused were never stored


async def test_per_address_limit_covers_every_route(start_server) -> None:
    srv = await start_server(
        {"incoming": {"rateLimitPerIP": {"requests": 2, "per": 60}}, "handlers": [_hook()]}
    )
    assert (await _post(srv, "h", {"n": 1}))[0] == 202
    assert (await _post(srv, "nope", {"n": 2}))[0] == 404
    status, after, body = await _post(srv, "h", {"n": 3})
    _assert_429(status, body)
    assert int(after) >= 1


async def test_repeated_auth_failures_are_throttled(start_server) -> None:
    srv = await start_server(
        {
            "incoming": {"secret": "right", "authFailures": {"max": 3, "window": 60}},
            "handlers": [_hook()],
        }
    )
    for _ in range(3):
        status, _after, body = await _post(srv, "h", {}, {"X-Webhook-Secret": "guess"})
        assert status == 401
    # now even the right secret waits: a guesser learns nothing more from this address
    status, after, body = await _post(srv, "h", {}, {"X-Webhook-Secret": "right"})
    _assert_429(status, body)
    assert 1 <= int(after) <= 60
    assert "right" not in body["error"]


async def test_auth_failure_throttle_is_on_without_any_config(start_server) -> None:
    # The documented default, {max: 20, window: 60}, with no authFailures key at all.
    srv = await start_server({"incoming": {"secret": "right"}, "handlers": [_hook()]})
    answers = [await _post(srv, "h", {}, {"X-Webhook-Secret": f"guess{n}"}) for n in range(25)]
    assert [a[0] for a in answers] == [401] * 20 + [429] * 5
    for status, after, body in answers[20:]:
        _assert_429(status, body)
        assert after is not None and 1 <= int(after) <= 60
    assert await srv.runtime.store.count_incoming() == 0


async def test_auth_failure_throttle_can_be_switched_off(start_server) -> None:
    srv = await start_server(
        {"incoming": {"secret": "right", "authFailures": None}, "handlers": [_hook()]}
    )
    statuses = {(await _post(srv, "h", {}, {"X-Webhook-Secret": "x"}))[0] for _ in range(25)}
    assert statuses == {401}


GATE: dict[str, Any] = {}


async def gated(ctx: ActionContext) -> Any:
    """A costly action: counts how many run at once and waits for the test to open the gate."""
    GATE["running"] += 1
    GATE["peak"] = max(GATE["peak"], GATE["running"])
    try:
        await GATE["open"].wait()
    finally:
        GATE["running"] -= 1
    return {"n": ctx.delivery.payload["n"]}


def _gated_hook(**more: Any) -> dict[str, Any]:
    GATE.update(running=0, peak=0, open=asyncio.Event())
    return {"id": "costly", "action": "custom", "function": f"{__name__}:gated", **more}


async def _until(condition: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_max_concurrent_queues_extra_deliveries(start_server) -> None:
    srv = await start_server({"handlers": [_gated_hook(maxConcurrent=2)]})
    answers = [await _post(srv, "costly", {"n": n}) for n in range(6)]
    assert [a[0] for a in answers] == [202] * 6  # stored: they wait, nothing is refused
    await _until(lambda: GATE["running"] == 2)
    await asyncio.sleep(0.1)
    assert GATE["running"] == 2
    assert await srv.runtime.store.count_incoming("pending") == 6
    GATE["open"].set()
    await srv.idle()
    assert GATE["peak"] == 2
    for _, _, body in answers:
        record = await srv.runtime.store.get_incoming(body["id"])
        assert record is not None and record.status == "done"
        assert record.result == {"n": answers.index((202, None, body))}


async def test_max_pending_refuses_before_storing(start_server) -> None:
    srv = await start_server({"handlers": [_gated_hook(maxConcurrent=1, maxPending=3)]})
    answers = [await _post(srv, "costly", {"n": n}) for n in range(4)]
    assert [a[0] for a in answers] == [202, 202, 202, 429]
    _assert_429(answers[3][0], answers[3][2])
    assert answers[3][1] == "1"
    assert await srv.runtime.store.count_incoming() == 3
    GATE["open"].set()
    await srv.idle()
    assert await srv.runtime.store.count_incoming("done") == 3
    assert GATE["peak"] == 1
    assert (await _post(srv, "costly", {"n": 9}))[0] == 202  # room again
    await srv.idle()


def test_a_reload_keeps_the_state_of_every_limit_it_leaves_as_it_was() -> None:
    """An edit elsewhere in the config (a handler added, another's limit changed) neither
    refills a handler's bucket nor lifts an address's block for failed authentication."""
    from clawdbot_webhooks.config import build_settings
    from clawdbot_webhooks.plugins import load_plugins
    from clawdbot_webhooks.web.ratelimit import Limits

    def settings(*extra: dict[str, Any], b_per: float = 3600) -> Any:
        hook = {"action": "send_message", "target": {"channel": "c", "peer": "p"}, "template": "x"}
        raw = {
            "incoming": {"secret": "s3cret", "authFailures": {"max": 3, "window": 600}},
            "handlers": [
                {**hook, "id": "b", "rateLimit": {"requests": 1, "per": b_per}},
                {**hook, "id": "d", "rateLimit": {"requests": 1, "per": 3600}},
                *({**hook, **more} for more in extra),
            ],
        }
        loaded = build_settings(raw, load_plugins(), None)
        return loaded.incoming, [(h.handler.id, h.rate_limit) for h in loaded.handlers]

    now = [1000.0]
    limits = Limits(*settings(), clock=lambda: now[0])
    assert limits.handler("b") == 0 and limits.handler("b") > 0
    assert limits.handler("d") == 0 and limits.handler("d") > 0
    for _ in range(3):
        limits.auth_failed("10.0.0.9")
    assert limits.auth_blocked("10.0.0.9") > 0
    limits.configure(*settings({"id": "c"}))  # an unrelated handler added
    assert limits.handler("b") > 0 and limits.handler("d") > 0
    assert limits.auth_blocked("10.0.0.9") > 0
    limits.configure(*settings({"id": "c"}, b_per=60))  # b's own limit changed: b starts over
    assert limits.handler("b") == 0 and limits.handler("d") > 0
    assert limits.auth_blocked("10.0.0.9") > 0


class _Broken:
    """A third party's verifier with a fault of its own: it raises on some requests."""

    def verify(self, request: Any, options: Any) -> None:
        if request.headers.get("x-odd"):
            raise RuntimeError("the verifier's own bug")
        raise VerificationError("no credentials")

    @hookimpl
    def register_verifiers(self, register: Any) -> None:
        register("broken", self)


async def test_a_verifier_that_raises_refuses_the_request_and_counts_it(start_server) -> None:
    """A verifier's own exception is no authentication: a 401 with a JSON body (not a 500),
    counted by the failed-authentication throttle like any other refusal."""
    srv = await start_server(
        {
            "incoming": {"authFailures": {"max": 3, "window": 60}},
            "handlers": [_hook(verify={"type": "broken"})],
        },
        plugins=[("broken", _Broken())],
    )
    for _ in range(3):
        status, _after, body = await _post(srv, "h", {}, {"X-Odd": "1"})
        assert status == 401 and body == {"ok": False, "error": "the request could not be verified"}
    status, _after, body = await _post(srv, "h", {}, {"X-Odd": "1"})
    _assert_429(status, body)
    assert await srv.runtime.store.count_incoming() == 0

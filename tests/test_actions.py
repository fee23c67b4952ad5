"""Each built-in action end to end, through the real server and the local gateway."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from clawdbot_webhooks.builtin.local_gateway import read_log


async def test_send_message_through_local_gateway(start_server, recorder) -> None:
    config = {
        "handlers": [
            {
                "id": "pr",
                "action": "send_message",
                "target": {"channel": "discord", "peer": "{{ event.room }}"},
                "template": "🔔 {{event.action}}: {{event.pull_request.title}}",
            },
        ],
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    status, body = await srv.post(
        "pr", {"action": "opened", "room": "dev-channel", "pull_request": {"title": "Fix"}}
    )
    assert status == 202
    await srv.idle()
    [message] = read_log(srv.runtime.settings.state_dir)
    assert (message["kind"], message["channel"], message["peer"]) == (
        "sent",
        "discord",
        "dev-channel",
    )
    assert message["text"] == "🔔 opened: Fix"
    assert message["idempotency_key"] == body["id"]
    [received] = recorder.of("message_received")
    assert received.data["text"] == "🔔 opened: Fix"
    assert received.causation == body["id"]


async def test_run_agent_reply_is_an_agent_response_event(start_server, recorder) -> None:
    config = {
        "handlers": [
            {
                "id": "github-events",
                "path": "/github",
                "action": "run_agent",
                "agentId": "devops",
                "template": "新的 GitHub 事件: {{event.action}} 在 {{event.repository.name}}",
            },
        ],
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    status, body = await srv.post("github", {"action": "opened", "repository": {"name": "claw"}})
    assert status == 202
    await srv.idle()
    [response] = recorder.of("agent_response")
    assert response.data == {
        "text": "[devops #1] 新的 GitHub 事件: opened 在 claw",
        "agentId": "devops",
        "runId": body["id"],
    }
    assert response.session == body["session"] and response.causation == body["id"]
    payload = response.to_payload()
    assert payload["response"]["text"].startswith("[devops #1]")
    assert payload["causation"] == body["id"]


async def test_ephemeral_sessions_start_and_end_per_delivery(start_server, recorder) -> None:
    config = {
        "handlers": [{"id": "a", "action": "run_agent", "agentId": "x", "template": "hi"}],
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    ids = [(await srv.post("a", {}))[1] for _ in range(3)]
    await srv.idle()
    sessions = {b["session"] for b in ids}
    assert len(sessions) == 3
    assert {e.session for e in recorder.of("session_started")} == sessions
    assert {e.session for e in recorder.of("session_ended")} == sessions
    for event in recorder.of("session_ended"):
        assert event.data["reason"] == "completed"
    order = [(e.type, e.session) for e in recorder.events]
    for session in sessions:
        kinds = [t for t, s in order if s == session]
        assert kinds == ["session_started", "message_received", "agent_response", "session_ended"]


async def test_persistent_session_reused_and_ends_when_idle(start_server, recorder) -> None:
    config = {
        # Long enough that the second webhook comes before it, however slow the machine.
        "sessions": {"idleTimeout": 2},
        "handlers": [
            {
                "id": "alerts",
                "action": "run_agent",
                "agentId": "oncall",
                "template": "告警: {{alert.name}} - {{alert.message}}",
                "sessionMode": "persistent",
                "sessionKey": "alerts-{{ alert.team }}",
            },
        ],
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    first = (
        await srv.post("alerts", {"alert": {"name": "CPU", "message": "high", "team": "ops"}})
    )[1]
    await srv.idle()
    second = (await srv.post("alerts", {"alert": {"name": "CPU", "message": "ok", "team": "ops"}}))[
        1
    ]
    await srv.idle()
    assert first["session"] == second["session"] == "alerts-ops"
    replies = [e.data["text"] for e in recorder.of("agent_response")]
    assert replies == ["[oncall #1] 告警: CPU - high", "[oncall #2] 告警: CPU - ok"]
    assert len(recorder.of("session_started")) == 1
    assert recorder.of("session_ended") == []
    idle_since = time.monotonic()
    while not recorder.of("session_ended") and time.monotonic() < idle_since + 10:
        await asyncio.sleep(0.05)
        await srv.runtime.bus.drain()
    [ended] = recorder.of("session_ended")
    assert ended.session == "alerts-ops" and ended.data["reason"] == "idle"


async def test_a_session_key_without_a_value_is_a_dead_letter_not_a_shared_session(
    start_server, recorder
) -> None:
    config = {
        "handlers": [
            {
                "id": "alerts",
                "action": "run_agent",
                "agentId": "oncall",
                "template": "{{ alert.name }}",
                "sessionMode": "persistent",
                "sessionKey": "ops-{{ alert.team }}",
            },
        ],
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    status, missing = await srv.post("alerts", {"alert": {"name": "CPU"}})
    assert status == 202 and missing["session"] == ""
    status, blank = await srv.post("alerts", {"alert": {"name": "CPU", "team": " "}})
    assert status == 202
    status, keyed = await srv.post("alerts", {"alert": {"name": "CPU", "team": "db"}})
    assert status == 202 and keyed["session"] == "ops-db"
    await srv.idle()
    store = srv.runtime.store
    dead = await store.get_incoming(missing["id"])
    assert dead is not None and dead.status == "dead" and dead.attempts == 1
    assert dead.last_error == (
        "sessionKey of handler 'alerts' has no value for this delivery: "
        "'dict object' has no attribute 'team'"
    )
    [attempt] = await store.attempts(missing["id"])
    assert attempt.error == dead.last_error
    blank_dead = await store.get_incoming(blank["id"])
    assert blank_dead is not None and blank_dead.status == "dead"
    assert blank_dead.last_error == (
        "sessionKey of handler 'alerts' has no value for this delivery: a value in it is empty"
    )
    done = await store.get_incoming(keyed["id"])
    assert done is not None and done.status == "done"
    # Only the keyed delivery ran its action.
    assert [e.session for e in recorder.of("agent_response")] == ["ops-db"]


async def test_forward_passes_body_and_retries_until_the_sink_heals(
    start_server, make_sink
) -> None:
    sink = await make_sink(script=[503, 500])
    config = {
        "handlers": [
            {
                "id": "relay",
                "action": "forward",
                "url": sink.url,
                "timeout": 2,
                "retry": {
                    "maxAttempts": 4,
                    "initialDelay": 0.05,
                    "backoff": "constant",
                    "jitter": False,
                },
            },
        ],
    }
    srv = await start_server(config)
    raw = b'{"exact": "bytes",  "kept": true}'
    status, body = await srv.post(
        "relay",
        raw=raw,
        headers={"X-Custom": "kept", "Connection": "keep-alive", "X-Forwarded-For": "203.0.113.9"},
    )
    assert status == 202
    await sink.wait_for(3)
    await srv.idle()
    assert [r["body"] for r in sink.received] == [raw] * 3
    last = sink.received[-1]["headers"]
    assert last["Content-Type"] == "application/json"
    assert last["X-Custom"] == "kept"
    assert last["Idempotency-Key"] == body["id"]
    assert "X-Forwarded-For" not in last
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "done" and record.attempts == 3


async def test_forward_of_a_compressed_webhook_sends_what_it_stored(
    start_server, make_sink
) -> None:
    """A webhook sent gzipped is stored decoded; it is forwarded as stored, without the
    Content-Encoding label that no longer fits its bytes (the receiver could not read it)."""
    import gzip

    sink = await make_sink()
    srv = await start_server({"handlers": [{"id": "relay", "action": "forward", "url": sink.url}]})
    raw = b'{"zipped": true}'
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    url = f"{srv.base}/webhook/relay"
    async with srv.session.post(url, data=gzip.compress(raw), headers=headers) as response:
        assert response.status == 202
    await sink.wait_for(1)
    await srv.idle()
    [got] = sink.received
    assert got["body"] == raw and "Content-Encoding" not in got["headers"]


async def test_forward_failure_is_recorded_after_last_attempt(
    start_server, make_sink, recorder
) -> None:
    sink = await make_sink(default=502)
    config = {
        "handlers": [
            {
                "id": "relay",
                "action": "forward",
                "url": sink.url,
                "retry": {"maxAttempts": 2, "initialDelay": 0.05, "jitter": False},
            },
        ],
    }
    srv = await start_server(config, plugins=[("recorder", recorder)])
    _, body = await srv.post("relay", {"a": 1})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead" and record.attempts == 2
    assert "forward answered 502" in (record.last_error or "")
    [error] = recorder.of("error")
    assert error.data["delivery"] == body["id"] and error.causation == body["id"]
    dead = await srv.runtime.store.dead_letters()
    assert [d.id for d in dead] == [body["id"]]
    # Each failed attempt is in the delivery's history, and goes with it when it is purged.
    history = await srv.runtime.store.attempts(body["id"])
    assert [a.number for a in history] == [1, 2]
    assert all("forward answered 502" in (a.error or "") for a in history)
    # The receiver's answer is kept on each attempt, as an outgoing delivery's is.
    assert [(a.status, a.response) for a in history] == [(502, "nope"), (502, "nope")]
    assert all(a.latency_ms >= 0 for a in history)
    assert await srv.runtime.store.purge_dead_ids([body["id"]]) == 1
    assert await srv.runtime.store.attempts(body["id"]) == []


async def test_forward_client_error_is_not_retried(start_server, make_sink) -> None:
    sink = await make_sink(default=400)
    config = {"handlers": [{"id": "relay", "action": "forward", "url": sink.url}]}
    srv = await start_server(config)
    _, body = await srv.post("relay", {"a": 1})
    await srv.idle()
    assert len(sink.received) == 1
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    [attempt] = await srv.runtime.store.attempts(body["id"])
    assert attempt.status == 400 and "forward answered 400" in (attempt.error or "")


async def test_forward_to_nobody_has_no_status(start_server) -> None:
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/in"
    once = {"maxAttempts": 1, "initialDelay": 0.05, "jitter": False}
    config = {"handlers": [{"id": "relay", "action": "forward", "url": url, "retry": once}]}
    srv = await start_server(config)
    _, body = await srv.post("relay", {"a": 1})
    await srv.idle()
    [attempt] = await srv.runtime.store.attempts(body["id"])
    assert attempt.status is None and attempt.response is None
    assert "forward failed" in (attempt.error or "")


def _write_module(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    sys.modules.pop(name, None)


async def test_custom_sync_and_async_functions(start_server, tmp_path) -> None:
    _write_module(
        tmp_path,
        "custom_fns",
        """
        import asyncio, threading
        seen = []

        def plain(ctx):
            seen.append(("plain", ctx.delivery.payload["n"], ctx.idempotency_key,
                         threading.current_thread() is threading.main_thread()))
            return {"doubled": ctx.delivery.payload["n"] * 2}

        async def coro(ctx):
            await asyncio.sleep(0)
            seen.append(("coro", ctx.options["template"], ctx.session))
            return {"text": ctx.options["template"]}
    """,
    )
    config = {
        "handlers": [
            {"id": "plain", "action": "custom", "function": "custom_fns:plain", "mode": "sync"},
            {
                "id": "coro",
                "action": "custom",
                "function": "custom_fns:coro",
                "template": "n={{ n }}",
                "mode": "sync",
            },
        ],
    }
    srv = await start_server(config)
    status, body = await srv.post("plain", {"n": 21})
    assert (status, body["result"]) == (200, {"doubled": 42})
    status, body2 = await srv.post("coro", {"n": 5})
    assert (status, body2["result"]) == (200, {"text": "n=5"})
    import custom_fns

    assert custom_fns.seen == [
        ("plain", 21, body["id"], False),  # a plain function runs off the event loop
        ("coro", "n=5", body2["session"]),
    ]


def _failing_at_first(tmp_path: Path, module: str, seen: str, failures: int) -> None:
    """Module ``module`` with ``run(ctx)``, which keeps ``seen`` (an expression of ``ctx``) in
    its list ``seen`` on every call and fails the first ``failures`` times."""
    source = f"""
        seen = []
        def run(ctx):
            seen.append({seen})
            if len(seen) <= {failures}:
                raise RuntimeError("not yet")
            return "ok"
    """
    _write_module(tmp_path, module, source)


def _retried(function: str, attempts: int, **more: Any) -> dict[str, Any]:
    """Handler ``f``: the custom ``function``, tried ``attempts`` times, 20 ms apart."""
    retry = {"maxAttempts": attempts, "initialDelay": 0.02, "jitter": False}
    return {"id": "f", "action": "custom", "function": function, "retry": retry, **more}


async def test_custom_function_errors_go_down_the_failure_path(start_server, tmp_path) -> None:
    _failing_at_first(tmp_path, "failing_fns", "ctx.delivery.attempt", 2)
    config = {"handlers": [_retried("failing_fns:run", 5)]}
    srv = await start_server(config)
    _, body = await srv.post("f", {})
    await srv.idle()
    import failing_fns

    assert failing_fns.seen == [1, 2, 3]
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "done" and record.result == "ok"
    assert json.loads(json.dumps(record.result)) == "ok"


async def test_a_failed_runs_message_is_kept_for_its_event(start_server, tmp_path) -> None:
    """The text a run rendered counts even when its action then fails: kept in the row of a
    delivery that is retried and then dead, its ``message_received`` is shown with it."""
    from clawdbot_webhooks.web.admin.chain import caused_events

    _write_module(
        tmp_path,
        "refusing_fns",
        """
        def refuse(ctx):
            raise RuntimeError("down")
    """,
    )
    config = {"handlers": [_retried("refusing_fns:refuse", 2, template="about {{ what }}")]}
    srv = await start_server(config)
    _, body = await srv.post("f", {"what": "it"})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead" and record.attempts == 2
    assert record.message == "about it"
    events = await caused_events(srv.runtime, record)
    kinds = [e.type for e in events]
    assert kinds == ["session_started", "message_received", "error", "session_ended"]
    assert json.loads(events[1].payload)["message"]["text"] == "about it"


async def test_a_retry_sees_the_payload_the_first_attempt_saw(start_server, tmp_path) -> None:
    """A stored body is parsed again for a retry by the rules it was received by (the depth
    limit among them): a form whose ``payload`` holds JSON nested too deeply stays the form
    on every attempt, not the JSON from the second on."""
    _failing_at_first(tmp_path, "seeing_fns", "ctx.delivery.payload", 1)
    config = {"incoming": {"maxJsonDepth": 2}, "handlers": [_retried("seeing_fns:run", 3)]}
    srv = await start_server(config)
    deep = '{"a": {"b": {"c": 1}}}'
    form = urlencode({"payload": deep}).encode()
    status, _ = await srv.post("f", raw=form, content_type="application/x-www-form-urlencoded")
    assert status == 202
    await srv.idle()
    import seeing_fns

    assert seeing_fns.seen == [{"payload": deep}, {"payload": deep}]

"""Dead letters replayed: a replay is a new round of attempts on the same row. The ``error``
event of each round counts every attempt so far, as the admin API does, and is an event of its
own; a persistent delivery stored without a session gets the one its fixed key renders."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import Event

from clawdbot_webhooks.outgoing.outbox import outbox_id
from tests.conftest import with_storage, write_config

BACKENDS = ["sqlite", "postgres"]
TOKEN = "admin-token-dead-letter-rounds"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"enabled": True, "token": TOKEN}
RETRY = {"maxAttempts": 2, "initialDelay": 0.05, "backoff": "constant", "jitter": False}


async def admin(srv: Any, method: str, path: str) -> tuple[int, Any]:
    async with srv.session.request(method, f"{srv.base}{path}", headers=AUTH) as resp:
        return resp.status, await resp.json()


async def until(check: Any, what: str) -> Any:
    for _ in range(1500):  # up to 30 s: a loaded machine is slow, not wrong
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not reached")


async def test_an_incoming_dead_letter_reports_every_rounds_attempts(
    start_server, make_sink, recorder
) -> None:
    sink = await make_sink(default=502)
    handler = {
        "id": "relay",
        "action": "forward",
        "url": sink.url,
        "retry": RETRY,
        "verify": {"type": "none"},
    }
    srv = await start_server(
        {"handlers": [handler], "admin": ADMIN}, plugins=[("recorder", recorder)]
    )
    _, body = await srv.post("relay", {"a": 1})
    delivery = body["id"]
    await srv.idle()
    await srv.runtime.bus.drain()
    [first] = recorder.of("error")
    assert first.data["attempts"] == 2

    status, _ = await admin(srv, "POST", f"/admin/api/dead-letters/{delivery}/replay")
    assert status == 202
    await until(lambda: _dead(srv, delivery), "dead again")
    await srv.runtime.bus.drain()
    errors = await until(lambda: _now(recorder.of("error")[1:]), "a second error event")
    [second] = errors
    assert len(sink.received) == 4
    _, shown = await admin(srv, "GET", f"/admin/api/incoming/{delivery}")
    assert shown["status"] == "dead" and shown["attempts"] == 4
    assert [a["number"] for a in shown["history"]] == [1, 2, 3, 4]
    # The total over both rounds, the number the admin API shows; a new event, not the first
    # one again (which the store would take for a duplicate).
    assert second.data["attempts"] == 4
    assert second.id != first.id
    assert second.data["delivery"] == first.data["delivery"] == delivery


async def test_an_outgoing_dead_letter_reports_every_rounds_attempts(
    start_server, make_sink
) -> None:
    failing = await make_sink(default=500)
    errors = await make_sink()
    srv = await start_server(
        {
            "admin": ADMIN,
            "outgoing": [
                {"id": "flaky", "url": failing.url, "events": ["agent_response"], "retry": RETRY},
                {"id": "errors", "url": errors.url, "events": ["error"]},
            ],
        }
    )
    event = Event("agent_response", {"text": "hi", "agentId": "a", "runId": "r"}, session="s")
    await srv.runtime.bus.publish(event)
    row = outbox_id(event.id, "flaky")

    async def dead() -> Any:
        # The error event is stored before the row is marked dead.
        _, shown = await admin(srv, "GET", f"/admin/api/outgoing/{row}")
        return shown if shown["status"] == "dead" else None

    assert (await until(dead, "dead"))["attempts"] == 2
    await errors.wait_for(1)
    assert errors.json_bodies()[0]["data"]["attempts"] == 2

    status, _ = await admin(srv, "POST", f"/admin/api/dead-letters/{row}/replay")
    assert status == 202
    await errors.wait_for(2)
    first, second = errors.json_bodies()
    assert len(failing.received) == 4
    shown = await until(dead, "dead again")
    assert shown["attempts"] == 4
    assert second["data"]["attempts"] == 4
    assert second["id"] != first["id"]


async def test_a_replay_after_the_session_key_is_fixed_stores_the_session(
    start_server, recorder, tmp_path: Path, state_dir: Path, storage: dict[str, Any] | None
) -> None:
    handler: dict[str, Any] = {
        "id": "alerts",
        "action": "run_agent",
        "agentId": "oncall",
        "template": "{{ alert.name }}",
        "sessionMode": "persistent",
        "sessionKey": "ops-{{ alert.team }}",
        "verify": {"type": "none"},
    }
    config: dict[str, Any] = {"handlers": [handler], "admin": ADMIN}
    srv = await start_server(config, plugins=[("recorder", recorder)])
    status, body = await srv.post("alerts", {"alert": {"name": "CPU"}})
    assert status == 202 and body["session"] == ""
    await srv.idle()
    dead = await srv.runtime.store.get_incoming(body["id"])
    assert dead is not None and dead.status == "dead" and dead.session == ""

    # The key fixed in the config file the server follows, then the dead letter replayed.
    handler["sessionKey"] = "ops-{{ alert.name | lower }}"
    fixed = with_storage({"stateDir": str(state_dir), **config}, storage)
    assert srv.runtime.settings.source == str(tmp_path / "config.json5")
    write_config(tmp_path / "config.json5", fixed)
    state = await srv.runtime.reloader.reload("test")
    assert state.last_result == "applied", state.errors
    status, _ = await admin(srv, "POST", f"/admin/api/dead-letters/{body['id']}/replay")
    assert status == 202
    await until(lambda: _done(srv, body["id"]), "the replay done")

    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.session == "ops-cpu"
    _, shown = await admin(srv, "GET", f"/admin/api/incoming/{body['id']}")
    assert shown["session"] == "ops-cpu"
    await srv.runtime.bus.drain()
    assert [e.session for e in recorder.of("agent_response")] == ["ops-cpu"]
    listed = await admin(srv, "GET", "/admin/api/incoming?session=ops-cpu")
    assert [i["id"] for i in listed[1]["items"]] == [body["id"]], json.dumps(listed[1])


async def _now(value: Any) -> Any:
    return value


async def _dead(srv: Any, delivery: str) -> bool:
    record = await srv.runtime.store.get_incoming(delivery)
    return record is not None and record.status == "dead" and record.attempts == 2


async def _done(srv: Any, delivery: str) -> bool:
    record = await srv.runtime.store.get_incoming(delivery)
    return record is not None and record.status == "done"

"""Dead letters: the schedule, the error event, and the ``dlq`` CLI (list, show, replay,
purge) through click's CliRunner against the server's own store."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import Event
from click.testing import CliRunner, Result

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.cli.support import parse_time
from clawdbot_webhooks.outgoing.outbox import outbox_id
from clawdbot_webhooks.store import open_store
from tests.conftest import with_storage, write_config

RETRY = {"maxAttempts": 3, "backoff": "constant", "initialDelay": 0.15, "jitter": False}


def webhooks(state_dir: Path, failing: str, errors: str) -> dict[str, Any]:
    return {
        "stateDir": str(state_dir),
        "outgoing": [
            {"id": "flaky", "url": failing, "events": ["agent_response"], "retry": RETRY},
            {"id": "errors", "url": errors, "events": ["error"]},
        ],
    }


async def cli(*args: str) -> Result:
    # The CLI runs its own event loop, so it gets a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)


async def dead_rows(srv: Any) -> list[str]:
    for _ in range(500):
        await srv.runtime.outbox._finisher.drain()
        letters = await srv.runtime.store.dead_letters()
        if letters:
            return [d.id for d in letters]
        await asyncio.sleep(0.02)
    raise AssertionError("nothing was dead-lettered")


async def test_dead_letter_error_event_and_replay(
    start_server, make_sink, tmp_path, state_dir, storage
) -> None:
    failing = await make_sink(default=500)
    errors = await make_sink()
    config = webhooks(state_dir, failing.url, errors.url)
    # The CLI works on the same store as the server (either backend).
    path = write_config(tmp_path / "cli.json5", with_storage(config, storage))
    srv = await start_server({k: v for k, v in config.items() if k != "stateDir"})
    event = Event("agent_response", {"text": "hi", "agentId": "a", "runId": "r"}, session="s")
    await srv.runtime.bus.publish(event)
    row_id = outbox_id(event.id, "flaky")

    assert await dead_rows(srv) == [row_id]
    assert len(failing.received) == 3
    # The configured schedule: constant 0.15 s between attempts.
    times = [r["at"] for r in failing.received]
    assert all(b - a >= 0.14 for a, b in itertools.pairwise(times))
    # An error event went to the error subscription (and not back to the failing one).
    await errors.wait_for(1)
    error = errors.json_bodies()[0]
    assert error["type"] == "error" and error["session"] == "s"
    assert error["data"]["delivery"] == row_id and error["data"]["subscription"] == "flaky"
    assert error["data"]["attempts"] == 3 and "HTTP 500" in error["data"]["error"]
    assert all(b["type"] == "agent_response" for b in failing.json_bodies())

    listed = await cli("dlq", "list", "--json", "--config", str(path))
    assert listed.exit_code == 0
    [letter] = json.loads(listed.output)
    assert letter["id"] == row_id and letter["kind"] == "outgoing"
    assert letter["target"] == "flaky" and letter["attempts"] == 3

    shown = await cli("dlq", "show", row_id, "--config", str(path))
    assert shown.exit_code == 0
    assert shown.output.count("HTTP 500") >= 3 and event.id in shown.output
    shown_json = json.loads(
        (await cli("dlq", "show", row_id, "--json", "--config", str(path))).output
    )
    assert [a["status"] for a in shown_json["history"]] == [500, 500, 500]

    # Stop the server: the CLI itself delivers the replay.
    await srv.server.close()
    failing.default = 200
    replayed = await cli("dlq", "replay", row_id, "--config", str(path))
    assert replayed.exit_code == 0, replayed.output
    assert f"{row_id}: delivered" in replayed.output
    assert len(failing.received) == 4
    assert json.loads(failing.received[3]["body"]) == event.to_payload()
    after = await cli("dlq", "list", "--config", str(path))
    assert "No dead letters." in after.output
    history = json.loads((await cli("dlq", "show", row_id, "--json", "--config", str(path))).output)
    assert history["status"] == "done"
    assert [a["status"] for a in history["history"]] == [500, 500, 500, 200]
    assert history["attempts"] == 4  # every attempt in the history, the replay's included

    again = await cli("dlq", "replay", row_id, "--config", str(path))
    assert again.exit_code == 1  # not dead any more


async def test_replay_all_with_progress_and_purge(
    start_server, make_sink, tmp_path, state_dir, storage
) -> None:
    failing = await make_sink(default=503)
    errors = await make_sink()
    config = webhooks(state_dir, failing.url, errors.url)
    config["outgoing"][0]["retry"] = {"maxAttempts": 1}
    # All 30 fail at once; the default breaker would pause the rest for its cooldown.
    config["outgoing"][0]["circuitBreaker"] = {"threshold": 100}
    # The CLI works on the same store as the server (either backend).
    path = write_config(tmp_path / "cli.json5", with_storage(config, storage))
    srv = await start_server({k: v for k, v in config.items() if k != "stateDir"})
    events = [Event("agent_response", {"text": str(i)}, session=f"s{i}") for i in range(30)]
    await asyncio.gather(*(srv.runtime.bus.publish(e) for e in events))
    for _ in range(1500):  # up to 30 s: a loaded machine is slow, not wrong
        await srv.runtime.outbox._finisher.drain()
        if len(await srv.runtime.store.dead_letters()) == 30:
            break
        await asyncio.sleep(0.02)
    assert len(await srv.runtime.store.dead_letters()) == 30, "dead letters did not all arrive"
    await srv.server.close()

    failing.default = 200
    since_future = await cli(
        "dlq", "replay", "--all", "--since", "2999-01-01", "--config", str(path)
    )
    assert "No dead letters to replay." in since_future.output
    replayed = await cli("dlq", "replay", "--all", "--since", "1h", "--config", str(path))
    assert replayed.exit_code == 0, replayed.output
    assert "Replayed 30 delivered." in replayed.output
    assert "Replaying" in replayed.stderr  # the progress bar
    delivered = {json.loads(r["body"])["id"] for r in failing.received[30:]}
    assert delivered == {e.id for e in events}

    # Make dead letters again, then purge them (those before a time, then all).
    failing.default = 503
    srv2 = await start_server({k: v for k, v in config.items() if k != "stateDir"})
    await srv2.runtime.bus.publish(Event("agent_response", {"text": "x"}, session="p"))
    assert len(await dead_rows(srv2)) == 1
    await srv2.server.close()
    kept = await cli("dlq", "purge", "--before", "2000-01-01", "--config", str(path))
    assert "Purged 0 dead letters." in kept.output
    purged = await cli("dlq", "purge", "--config", str(path))
    assert "Purged 1 dead letter." in purged.output
    assert "No dead letters." in (await cli("dlq", "list", "--config", str(path))).output


def test_parse_time() -> None:
    now = 1_700_000_000.0
    assert parse_time("2h", now) == now - 7200
    assert parse_time("1700000000") == now
    assert parse_time("2023-11-14T22:13:20Z") == now
    assert parse_time("2023-11-14T22:13:20") == now
    started = time.time()
    assert started - 61 <= parse_time("1m") <= time.time() - 59


async def test_an_incoming_dead_letter_shows_its_failed_attempts_and_purges_them(
    start_server, make_sink, tmp_path, state_dir, storage
) -> None:
    sink = await make_sink(default=502)
    retry = {"maxAttempts": 2, "initialDelay": 0.05, "jitter": False}
    config = {
        "stateDir": str(state_dir),
        "handlers": [
            {
                "id": "relay",
                "action": "forward",
                "url": sink.url,
                "retry": retry,
                "verify": {"type": "none"},
            }
        ],
    }
    path = write_config(tmp_path / "cli.json5", with_storage(config, storage))
    srv = await start_server({k: v for k, v in config.items() if k != "stateDir"})
    _, body = await srv.post("relay", {"a": 1})
    await srv.idle()
    await srv.server.close()

    shown = json.loads(
        (await cli("dlq", "show", body["id"], "--json", "--config", str(path))).output
    )
    assert shown["kind"] == "incoming" and shown["status"] == "dead"
    assert [a["number"] for a in shown["history"]] == [1, 2]
    assert all("forward answered 502" in a["error"] for a in shown["history"])
    text = (await cli("dlq", "show", body["id"], "--config", str(path))).output
    assert text.count("forward answered 502") >= 2  # the error line and the history's

    assert "Purged 1 dead letter." in (await cli("dlq", "purge", "--config", str(path))).output
    url = storage["url"] if storage else f"sqlite:///{state_dir / 'webhooks.sqlite3'}"
    store = open_store(url, schema=(storage or {}).get("schema"))
    await store.open()
    try:
        assert await store.get_incoming(body["id"]) is None
        assert await store.attempts(body["id"]) == []  # its history went with it
    finally:
        await store.close()

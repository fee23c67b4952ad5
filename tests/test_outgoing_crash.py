"""kill -9 of the server while 1,000 outgoing deliveries are pending or waiting for a retry:
after a restart every event reaches the sink, each exactly once by id."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.slow

POSTS = 250  # run_agent: session_started, message_received, agent_response, session_ended


def outbox_rows(db: Path) -> list[tuple[str, str, str, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT event_id, event_type, session, status FROM outbox").fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()


async def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_kill_9_with_1000_pending_then_each_event_exactly_once(
    server_process, make_sink, tmp_path
) -> None:
    # Before the kill: one request in three succeeds, the rest get 503 and wait for a retry.
    before = [200 if i % 3 == 0 else 503 for i in range(3000)]
    sink = await make_sink(script=list(before), default=503)
    proc = server_process(
        {
            "handlers": [
                {
                    "id": "agent",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "{{ n }}",
                    "verify": {"type": "none"},
                }
            ],
            "outgoing": [
                {
                    "id": "sink",
                    "url": sink.url,
                    "events": ["*"],
                    "concurrency": 16,
                    "retry": {"maxAttempts": 1000, "initialDelay": 0.2, "maxDelay": 1.0},
                    "circuitBreaker": {"threshold": 50, "cooldown": 0.2},
                }
            ],
        }
    )
    db = tmp_path / "state" / "webhooks.sqlite3"
    await asyncio.to_thread(proc.start)

    async with aiohttp.ClientSession() as client:
        slots = asyncio.Semaphore(16)

        async def post(n: int) -> None:
            async with (
                slots,
                client.post(f"{proc.base}/webhook/agent", json={"n": n}) as resp,
            ):
                assert resp.status == 202

        await asyncio.gather(*(post(n) for n in range(POSTS)))

    await wait_until(lambda: len(outbox_rows(db)) >= 4 * POSTS, 60, "1,000 outbox rows")
    rows = await asyncio.to_thread(outbox_rows, db)
    pending = sum(1 for r in rows if r[3] == "pending")
    assert pending > 0
    await asyncio.to_thread(proc.kill)
    await asyncio.sleep(0.2)
    cut = len(sink.received)
    got_200_before = {
        sink.json_bodies()[i]["id"] for i in range(cut) if i < len(before) and before[i] == 200
    }
    at_kill = await asyncio.to_thread(outbox_rows, db)
    committed_done = {r[0] for r in at_kill if r[3] == "done"}

    # After the restart the sink is healthy.
    sink.script.clear()
    sink.default = 200
    await asyncio.to_thread(proc.start)

    rows = await asyncio.to_thread(outbox_rows, db)
    expected = {r[0] for r in rows}
    assert len(expected) == 4 * POSTS
    by_session = Counter(r[2] for r in rows)
    assert len(by_session) == POSTS and set(by_session.values()) == {4}

    def all_done() -> bool:
        return all(r[3] == "done" for r in outbox_rows(db))

    await wait_until(all_done, 90, "every delivery to finish")
    after = [b["id"] for b in sink.json_bodies()[cut:]]
    delivered = got_200_before | set(after)
    assert delivered == expected
    # A row whose success was committed before the kill is not sent again; only those whose
    # success was still on its way to the disk when the process died are.
    counts = Counter(after)
    assert max(counts.values()) == 1
    assert committed_done <= got_200_before
    assert not committed_done & set(after)
    assert proc.terminate() == 0

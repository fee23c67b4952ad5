"""Replay protection: delivery ids seen before are answered as duplicates and not run again,
within ``incoming.dedupWindow``, across restarts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from clawdbot_webhooks.store import SQLiteStore
from clawdbot_webhooks.store.sqlite_writer import LATER_SECONDS
from tests.conftest import incoming_record

GH_SECRET = "gh-webhook-secret-for-tests"


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    digest = hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={digest}",
    }


async def test_github_redelivery_after_restart_is_a_duplicate(server_process, make_sink) -> None:
    sink = await make_sink()
    proc = server_process(
        {
            "handlers": [
                {
                    "id": "github",
                    "action": "forward",
                    "url": sink.url,
                    "verify": {"type": "github", "secret": GH_SECRET},
                }
            ]
        }
    )
    body = json.dumps({"ref": "refs/heads/main", "after": "abc123"}).encode()
    url = f"{proc.base}/webhook/github"
    # a new connection per request: the server process is restarted in between
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        proc.start()
        async with http.post(url, data=body, headers=github_headers(body, "d-1")) as resp:
            assert resp.status == 202
            first = await resp.json()
        await sink.wait_for(1)
        assert proc.terminate() == 0
        proc.start()
        # GitHub's "Redeliver" button: same X-GitHub-Delivery, same body, same signature.
        async with http.post(url, data=body, headers=github_headers(body, "d-1")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True, "duplicate": True, "id": first["id"]}
        other = json.dumps({"ref": "refs/heads/dev"}).encode()
        async with http.post(url, data=other, headers=github_headers(other, "d-2")) as resp:
            assert resp.status == 202
        await sink.wait_for(2)
        await asyncio.sleep(0.2)  # anything the redelivery might have run would show by now
    assert [r["body"] for r in sink.received] == [body, other]
    proc.terminate()


HOOK = {
    "id": "h",
    "action": "send_message",
    "target": {"channel": "local", "peer": "me"},
    "template": "{{ n }}",
}


async def test_every_delivery_id_header_counts(start_server) -> None:
    srv = await start_server({"handlers": [HOOK]})
    long_key = "k" * 500  # stored as its hash, still recognised
    for header, value in [
        ("webhook-id", "msg_1"),
        ("svix-id", "msg_2"),
        ("X-GitHub-Delivery", "gh-3"),
        ("Idempotency-Key", "idem-4"),
        ("Idempotency-Key", long_key),
    ]:
        status, first = await srv.post("h", {"n": 1}, headers={header: value})
        assert status == 202, header
        status, again = await srv.post("h", {"n": 2}, headers={header: value})
        assert (status, again) == (200, {"ok": True, "duplicate": True, "id": first["id"]})
    await srv.idle()
    assert await srv.runtime.store.count_incoming() == 5
    assert await srv.runtime.store.find_duplicate("h", long_key) is None
    hashed = "sha256:" + hashlib.sha256(long_key.encode()).hexdigest()
    assert await srv.runtime.store.find_duplicate("h", hashed) is not None


async def test_ids_older_than_the_window_no_longer_count(start_server) -> None:
    # Long enough that the second post is inside it, however slow the store.
    srv = await start_server({"incoming": {"dedupWindow": 1.5}, "handlers": [HOOK]})
    key = {"Idempotency-Key": "same"}
    status, first = await srv.post("h", {"n": 1}, headers=key)
    assert status == 202
    status, body = await srv.post("h", {"n": 1}, headers=key)
    assert status == 200 and body["duplicate"] is True
    await asyncio.sleep(1.6)
    status, later = await srv.post("h", {"n": 1}, headers=key)
    assert status == 202 and later["id"] != first["id"]
    await srv.idle()
    assert await srv.runtime.store.count_incoming("done") == 2


async def test_a_zero_window_turns_deduplication_off(start_server) -> None:
    srv = await start_server({"incoming": {"dedupWindow": 0}, "handlers": [HOOK]})
    for _ in range(2):
        status, _body = await srv.post("h", {"n": 1}, headers={"Idempotency-Key": "same"})
        assert status == 202


async def test_window_and_pruning_in_the_store_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    now = time.time()
    store = SQLiteStore(path)
    await store.open()
    assert await store.add_incoming(incoming_record("old", now - 100), 0, dedup_since=now - 50)
    assert await store.add_incoming(incoming_record("fresh", now - 10), 0, dedup_since=now - 50)
    await store.close()

    store = SQLiteStore(path)  # a restart: nothing in memory carries over
    await store.open()
    # "fresh" is inside the window: still a duplicate
    assert not await store.add_incoming(incoming_record("fresh", now), 0, dedup_since=now - 50)
    # "old" is outside it: counts no more even though nothing has pruned it yet
    assert await store.add_incoming(incoming_record("old", now), 0, dedup_since=now - 50)
    assert not await store.add_incoming(incoming_record("old", now + 1), 0, dedup_since=now - 50)
    assert await store.prune_dedup(now - 5) == 1  # only "fresh" (now - 10) was left to forget
    assert await store.find_duplicate("h", "fresh") is None
    assert await store.find_duplicate("h", "old") == f"dlv_old_{now}"
    await store.close()


async def test_duplicates_inside_one_commit_batch_are_told_apart(tmp_path: Path) -> None:
    """Inserts queued together are written with one executemany; a duplicate among them
    rolls the batch back and each insert runs alone: the first of a key is stored, the
    others are duplicates, unrelated ones are stored, and the finishes queued with them land."""
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    await store.open()
    now = time.time()
    first = incoming_record("k", now)
    records = [
        first,
        incoming_record("k", now + 1),
        incoming_record("other", now),
        incoming_record("k", now + 2),
    ]
    outcomes = await asyncio.gather(
        *(store.add_incoming(r, 30, dedup_since=now - 60) for r in records),
        store.finish_incoming(first.id, "done", attempts=1, result={"n": 1}),
    )
    assert outcomes[:4] == [True, False, True, False]
    stored = await store.get_incoming(first.id)
    assert stored is not None and stored.status == "done" and stored.result == {"n": 1}
    assert await store.count_incoming() == 2
    await store.close()


async def test_small_bodies_in_the_row_large_ones_apart_read_back_the_same(
    tmp_path: Path,
) -> None:
    from clawdbot_webhooks.store import INLINE_BODY_BYTES

    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    await store.open()
    now = time.time()
    small, large = incoming_record("small", now), incoming_record("large", now)
    small.body = b'{"n": 1}'
    large.body = b'{"pad": "' + b"x" * (INLINE_BODY_BYTES * 3) + b'"}'
    assert await asyncio.gather(store.add_incoming(small, 0), store.add_incoming(large, 0))
    for record in (small, large):
        stored = await store.get_incoming(record.id)
        assert stored is not None and stored.body == record.body
    claimed = {r.id: r.body for r in await store.claim_incoming(10, 30)}
    assert claimed == {small.id: small.body, large.id: large.body}
    rows = await store._do(
        lambda conn: conn.execute(
            "SELECT i.id, length(i.body), b.id IS NOT NULL FROM inbox i "
            "LEFT JOIN inbox_bodies b ON b.id = i.id"
        ).fetchall()
    )
    assert sorted(rows) == sorted([(small.id, len(small.body), 0), (large.id, 0, 1)])
    await store.close()


def _status_on_disk(path: Path, delivery_id: str) -> str:
    """Read with a connection of its own: what is committed, not what the writer holds."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT status FROM inbox WHERE id=?", (delivery_id,)).fetchone()
        return str(row[0])
    finally:
        conn.close()


async def test_an_outcome_nobody_waits_for_goes_with_the_next_write_or_on_its_own(
    tmp_path: Path,
) -> None:
    """Held back to share the next waited-for write's transaction; without one, written
    within ``LATER_SECONDS``; and written before the store closes."""
    path = tmp_path / "inbox.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    first, second, third = (incoming_record(k, time.time()) for k in ("a", "b", "c"))
    assert await store.add_incoming(first, 30)
    store.record_outcome(first.id, "done", attempts=1)
    assert _status_on_disk(path, first.id) == "pending"  # held back, not yet written
    assert await store.add_incoming(second, 30)
    assert _status_on_disk(path, first.id) == "done"  # committed with the insert

    store.record_outcome(second.id, "done", attempts=1)
    deadline = time.monotonic() + 5
    while _status_on_disk(path, second.id) != "done":  # no other write comes
        assert time.monotonic() < deadline, "an outcome held back was never written"
        await asyncio.sleep(LATER_SECONDS / 5)

    assert await store.add_incoming(third, 30)
    store.record_outcome(third.id, "dropped", attempts=1)
    await store.close()
    assert _status_on_disk(path, third.id) == "dropped"


async def test_an_outcome_nobody_waits_for_is_written_or_its_failure_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "inbox.sqlite3")
    await store.open()
    record = incoming_record("k", time.time())
    assert await store.add_incoming(record, 30)
    store.record_outcome(record.id, "done", attempts=1, result={"ok": 1})
    assert await store.count_incoming("done") == 1  # queued behind it: written first
    stored = await store.get_incoming(record.id)
    assert stored is not None and stored.result == {"ok": 1} and stored.attempts == 1
    await store.close()
    with caplog.at_level("ERROR"):
        store.record_outcome(record.id, "done", attempts=2)
    assert f"the outcome of delivery {record.id} could not be written" in caplog.text

"""The storage layer on both backends: versioned schema and the ``db`` commands, retention of
finished deliveries, and concurrent start-ups applying each migration once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import Event
from click.testing import CliRunner, Result

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.outgoing.outbox import outbox_id
from clawdbot_webhooks.store import (
    DeliveryQuery,
    EventRecord,
    IncomingRecord,
    OutgoingOutcome,
    open_store,
)
from clawdbot_webhooks.store.postgres_schema import MIGRATIONS
from tests.conftest import POSTGRES_URL, outgoing_record, with_storage, write_config


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)


async def test_db_status_then_upgrade_then_counts(tmp_path, storage, start_server) -> None:
    config = with_storage({"stateDir": str(tmp_path / "state")}, storage)
    path = write_config(tmp_path / "config.json5", config)

    fresh = await cli("db", "status", "--json", "--config", str(path))
    assert fresh.exit_code == 0, fresh.output
    status = json.loads(fresh.output)
    assert status["version"] == 0 and status["applied"] == []
    versions = [p["version"] for p in status["pending"]]
    assert versions == list(range(1, len(versions) + 1))

    upgraded = await cli("db", "upgrade", "--config", str(path))
    assert upgraded.exit_code == 0, upgraded.output
    assert f"Applied {len(versions)} migration" in upgraded.output
    again = await cli("db", "upgrade", "--json", "--config", str(path))
    after = json.loads(again.output)
    assert after["version"] == versions[-1] and after["pending"] == []
    assert [a["version"] for a in after["applied"]] == versions

    srv = await start_server(
        {"handlers": [{"id": "h", "action": "run_agent", "agentId": "a", "template": "x"}]}
    )
    for _ in range(3):
        assert (await srv.post("h", {}))[0] == 202
    await srv.idle()
    shown = await cli("db", "status", "--config", str(path))
    assert shown.exit_code == 0
    assert f"schema version {versions[-1]}" in shown.output
    assert "inbox: done 3" in shown.output
    counted = json.loads((await cli("db", "status", "--json", "--config", str(path))).output)
    assert counted["counts"]["inbox"] == {"done": 3}


async def test_prune_finished_keeps_dead_letters_pending_and_dedup_keys(
    start_server, make_sink
) -> None:
    sink = await make_sink(script=[200, 200, 200, 200, 410])  # the fifth delivery dies
    srv = await start_server(
        {
            "incoming": {"dedupWindow": 3600},
            "handlers": [{"id": "h", "action": "run_agent", "agentId": "a", "template": "x"}],
            "outgoing": [{"id": "s", "url": sink.url, "events": ["agent_response"]}],
        }
    )
    store = srv.runtime.store
    plain = [(await srv.post("h", {"n": n}))[1]["id"] for n in range(3)]
    keyed = (await srv.post("h", {}, headers={"idempotency-key": "k1"}))[1]["id"]
    await srv.idle()
    await sink.wait_for(4)  # the four replies
    dead_event = Event("agent_response", {"text": "dies"}, session="d")
    await srv.runtime.bus.publish(dead_event)
    for _ in range(200):
        if await store.dead_letters():
            break
        await asyncio.sleep(0.02)
    await srv.runtime.outbox._finisher.drain()
    dead_id = outbox_id(dead_event.id, "s")
    assert [d.id for d in await store.dead_letters()] == [dead_id]

    deleted = await store.prune_finished(time.time() + 1)
    # Three plain incoming and four delivered replies; not the keyed one (its dedup
    # key still guards against a repeat), not the dead letter.
    assert deleted == 7
    assert [await store.get_incoming(i) for i in plain] == [None, None, None]
    assert await store.get_incoming(keyed) is not None
    assert [d.id for d in await store.dead_letters()] == [dead_id]
    assert len(await store.attempts(dead_id)) == 1
    # A repeat of the keyed delivery is still recognised.
    status, body = await srv.post("h", {}, headers={"idempotency-key": "k1"})
    assert status == 200 and body["id"] == keyed
    # Once the dedup key is let go of, the keyed one goes too.
    await store.prune_dedup(time.time() + 1)
    assert await store.prune_finished(time.time() + 1) == 1


async def test_retention_runs_by_itself(start_server, storage) -> None:
    retention: dict[str, Any] = {**(storage or {}), "retention": {"delivered": "1s"}}
    srv = await start_server(
        {
            "incoming": {"dedupWindow": 0},
            "handlers": [{"id": "h", "action": "run_agent", "agentId": "a", "template": "x"}],
            "storage": retention,
        }
    )
    assert (await srv.post("h", {}))[0] == 202
    await srv.idle()
    deadline = time.monotonic() + 10
    while await srv.runtime.store.count_incoming() > 0:
        assert time.monotonic() < deadline, "the finished delivery was never pruned"
        await asyncio.sleep(0.1)


async def test_concurrent_startups_apply_each_migration_once(storage) -> None:
    if storage is None:  # one process owns a SQLite store; this is about shared ones
        return
    stores = [open_store(POSTGRES_URL, schema=storage["schema"], pool_size=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        status = await stores[0].schema_status()
        assert [v for v, _, _ in status.applied] == [m.version for m in MIGRATIONS]
        assert status.pending == []
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_endpoint_stats_and_listings(start_server, make_sink) -> None:
    """What the dashboard's health tables and lists read, the same on both backends."""
    good, bad = await make_sink(), await make_sink(default=500)
    retry = {"maxAttempts": 2, "initialDelay": 0.01, "jitter": False}
    srv = await start_server(
        {
            "handlers": [
                {"id": "ok", "action": "run_agent", "agentId": "a", "template": "x"},
                {"id": "boom", "action": "forward", "url": bad.url, "retry": retry},
            ],
            "outgoing": [
                {"id": "good", "url": good.url, "events": ["agent_response"]},
                {"id": "bad", "url": bad.url, "events": ["agent_response"], "retry": retry},
            ],
        }
    )
    since = time.time() - 1
    await srv.post("ok", {})
    await srv.post("boom", {})
    await srv.idle()
    await good.wait_for(1)
    deadline = time.time() + 10
    while len(await srv.runtime.store.dead_letters()) < 2:
        assert time.time() < deadline, "the failing deliveries were not dead-lettered"
        await asyncio.sleep(0.05)
    stats = {(s["kind"], s["target"]): s for s in await srv.runtime.store.delivery_stats(since)}
    assert stats[("incoming", "ok")]["statuses"] == {"done": 1}
    assert stats[("incoming", "boom")]["statuses"] == {"dead": 1}
    assert "forward answered 500" in stats[("incoming", "boom")]["last_error"]
    assert (stats[("outgoing", "good")]["attempts"], stats[("outgoing", "good")]["succeeded"]) == (
        1,
        1,
    )
    assert (stats[("outgoing", "bad")]["attempts"], stats[("outgoing", "bad")]["succeeded"]) == (
        2,
        0,
    )
    assert stats[("outgoing", "bad")]["last_error"]
    # The latest success beside the latest error, so a recovered endpoint reads as such.
    assert stats[("incoming", "ok")]["last_success_at"] >= since
    assert stats[("incoming", "boom")]["last_success_at"] is None
    assert stats[("outgoing", "good")]["last_success_at"] >= since
    assert stats[("outgoing", "bad")]["last_success_at"] is None
    from clawdbot_webhooks.store import DeliveryQuery

    dead = await srv.runtime.store.list_deliveries("outgoing", DeliveryQuery(status="dead"))
    assert [d.target for d in dead] == ["bad"]
    found = await srv.runtime.store.list_deliveries(
        "incoming", DeliveryQuery(search="dlv_", limit=10)
    )
    assert {d.target for d in found} == {"ok", "boom"}
    # The search also finds words of the last error, and outgoing rows by event type.
    found = await srv.runtime.store.list_deliveries(
        "incoming", DeliveryQuery(search="answered 500", limit=10)
    )
    assert [d.target for d in found] == ["boom"]
    found = await srv.runtime.store.list_deliveries(
        "outgoing", DeliveryQuery(search="agent_resp", limit=10)
    )
    assert {d.target for d in found} == {"good", "bad"}
    assert not await srv.runtime.store.list_deliveries(
        "incoming", DeliveryQuery(search="no such text", limit=10)
    )


def test_ids_sort_by_creation_time_and_sessions_are_uuid4(monkeypatch) -> None:
    """Row ids sort by the millisecond they were made in (claims and listings rely on it);
    ephemeral sessions are real version-4 UUIDs."""
    import re
    import uuid

    from clawdbot_webhooks_hookspecs import types

    from clawdbot_webhooks.sessions import ephemeral_session

    clock = iter([1_700_000_000.000, 1_700_000_000.001, 1_700_000_031.5, 1_800_000_000.0])
    monkeypatch.setattr(types.time, "time", lambda: next(clock))
    made = [types.new_id("dlv") for _ in range(4)]
    assert made == sorted(made) and len(set(made)) == 4
    assert all(re.fullmatch(r"dlv_[0-9a-hjkmnp-tv-z]{26}", i) for i in made)
    sessions = {ephemeral_session() for _ in range(2000)}
    assert len(sessions) == 2000
    for session in list(sessions)[:200]:
        parsed = uuid.UUID(session.removeprefix("hook:"))
        assert session == f"hook:{parsed}"
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_derived_ids_repeat_and_sort_as_their_causes(monkeypatch) -> None:
    """An id derived from a time-ordered one (an event of a delivery, an outgoing row of an
    event) is the same on every re-run and sorts as its cause does, so indexes of such ids
    grow at their end; one derived from anything else is a plain digest, as before."""
    import hashlib
    import re

    from clawdbot_webhooks_hookspecs import types

    from clawdbot_webhooks.events import derived_event_id
    from clawdbot_webhooks.outgoing.outbox import outbox_id

    clock = iter([1_700_000_000 + k / 100 for k in range(50)])
    monkeypatch.setattr(types.time, "time", lambda: next(clock))
    causes = [types.new_id("dlv") for _ in range(50)]
    events = [derived_event_id(c, "agent_response", "run") for c in causes]
    rows = [outbox_id(e, "sub") for e in events]
    assert events == sorted(events) and rows == sorted(rows)
    assert len(set(events)) == len(set(rows)) == 50
    for derived in events + rows:
        assert re.fullmatch(r"(evt|out)_[0-9a-z]{26}", derived)
    assert events[0][4:14] == causes[0][4:14] == rows[0][4:14]
    assert derived_event_id(causes[7], "agent_response", "run") == events[7]  # a re-run
    assert outbox_id(events[7], "sub") != outbox_id(events[7], "other")
    digest = hashlib.sha256(b"bridge\x1fcall-1\x1fagent_response").hexdigest()
    assert derived_event_id("bridge", "call-1", "agent_response") == "evt_" + digest[:26]


def _incoming(n: int) -> IncomingRecord:
    return IncomingRecord(
        id=f"dlv_{n}",
        hook_id="h",
        received_at=time.time(),
        content_type="application/json",
        body=b"{}",
        headers={},
        query={},
        client_ip="127.0.0.1",
        session=f"hook:{n}",
    )


@contextlib.asynccontextmanager
async def _opened(url: str, synchronous: str = "NORMAL", **options: Any) -> AsyncIterator[Any]:
    """``open_store(url, synchronous, **options)``, open for the block and closed after it."""
    store = open_store(url, synchronous, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _store_as_before(path: Path, undo: str) -> Any:
    """A SQLite store taken back to an older schema by ``undo`` (SQL), opened without
    migrating, as the previous version would have it."""
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(undo)
    conn.close()
    old = open_store(f"sqlite:///{path}", migrate=False)
    await old.open()
    return old


def _indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()


async def test_sqlite_store_from_before_partial_status_indexes_upgrades(tmp_path) -> None:
    """A SQLite store made before version 4 had one index of every delivery by status. After
    the upgrade it is gone, and what was found through it still is: dead letters, waiting
    retries and pending deliveries, through partial indexes of their own."""
    path = tmp_path / "store.db"
    old = await _store_as_before(
        path,
        "DROP INDEX inbox_dead; CREATE INDEX inbox_due ON inbox (status, next_attempt_at);"
        "DELETE FROM schema_migrations WHERE version = 4;",
    )
    for n in range(4):
        assert await old.add_incoming(_incoming(n), 0.0)
    await old.finish_incoming("dlv_0", "done", attempts=1)
    await old.finish_incoming("dlv_1", "dead", attempts=3, error="gave up")
    await old.finish_incoming("dlv_2", "pending", attempts=1, retry_at=time.time() + 60)
    assert [v for v, _ in (await old.schema_status()).pending] == [4]
    await old.close()

    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        status = await store.schema_status()
        assert status.pending == [] and 4 in {v for v, _, _ in status.applied}
        assert status.counts["inbox"] == {"done": 1, "dead": 1, "pending": 2}
        indexes = _indexes(path)
        assert "inbox_due" not in indexes and {"inbox_dead", "inbox_pending"} <= indexes
        assert [d.id for d in await store.dead_letters()] == ["dlv_1"]
        counts = await store.queue_counts()
        assert (counts["incoming_waiting"], counts["incoming_dead"]) == (1, 1)
        assert await store.count_incoming("pending") == 2
        assert await store.count_incoming("dead") == 1
        claimed = await store.claim_incoming(10, 30.0)
        assert [r.id for r in claimed] == ["dlv_3"]  # the retry is not due yet
        assert await store.revive(["dlv_1"]) == ["dlv_1"]
        assert await store.dead_letters() == []
        assert await store.count_incoming("pending") == 3
    finally:
        await store.close()


async def test_sqlite_store_from_before_partial_outbox_indexes_upgrades(tmp_path) -> None:
    """Before version 5 the outbox had indexes of every row by status and by session. After
    the upgrade they are gone, and claims (oldest first, one session's rows in order), due
    times, dead letters and their revival still find the right rows."""
    path = tmp_path / "store.db"
    old = await _store_as_before(
        path,
        "DROP INDEX outbox_pending; DROP INDEX outbox_dead;"
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at);"
        "CREATE INDEX outbox_order ON outbox (subscription_id, session, seq);"
        "DELETE FROM schema_migrations WHERE version = 5;",
    )
    rows = [
        outgoing_record(0, "a"),
        outgoing_record(1, "a"),
        outgoing_record(2, "b"),
        outgoing_record(3, "c"),
    ]
    rows += [outgoing_record(4, "d"), outgoing_record(5, "c")]
    assert await old.add_outgoing(rows, 0.0) == [r.id for r in rows]
    later = time.time() + 60
    await old.finish_outgoing_many(
        [
            OutgoingOutcome("out_2", "done", 1),
            OutgoingOutcome("out_3", "pending", 1, error="HTTP 503", retry_at=later),
            OutgoingOutcome("out_4", "dead", 5, error="HTTP 410"),
        ]
    )
    assert [v for v, _ in (await old.schema_status()).pending] == [5]
    await old.close()

    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        status = await store.schema_status()
        assert status.pending == []
        assert status.counts["outbox"] == {"done": 1, "dead": 1, "pending": 4}
        indexes = _indexes(path)
        assert not {"outbox_due", "outbox_order"} & indexes
        assert {"outbox_pending", "outbox_dead", "outbox_pending_lane"} <= indexes
        assert [(d.id, d.kind) for d in await store.dead_letters()] == [("out_4", "outgoing")]
        counts = await store.queue_counts()
        assert (counts["outgoing_waiting"], counts["outgoing_dead"]) == (1, 1)
        assert await store.next_outgoing_due() is not None
        # Oldest first; out_5 waits behind the retry of out_3 (session c), out_3 for its time.
        claimed = await store.claim_outgoing(10, 30.0)
        assert [r.id for r in claimed] == ["out_0", "out_1"]
        await store.finish_outgoing_many([OutgoingOutcome("out_3", "done", 2)])
        assert [r.id for r in await store.claim_outgoing(10, 30.0)] == ["out_5"]
        assert await store.revive(["out_4"]) == ["out_4"]
        assert await store.dead_letters() == []
        assert [r.id for r in await store.claim_outgoing(10, 30.0)] == ["out_4"]
    finally:
        await store.close()


def _open_at_once(path: Path, start: threading.Barrier, failures: list[BaseException]) -> None:
    from clawdbot_webhooks.store.sqlite_writer import SQLiteWriter

    writer = SQLiteWriter(path, "CREATE TABLE IF NOT EXISTS t (a);")
    start.wait()
    try:
        writer._connect().close()
    except Exception as exc:
        failures.append(exc)


def test_connections_opening_one_new_sqlite_file_at_once_all_get_it(tmp_path) -> None:
    """Processes that start together open the same new file at the same moment, and SQLite
    refuses all but one switch to WAL at once ("database is locked") instead of waiting:
    each opener must wait its turn, not fail to start."""
    for round_ in range(30):  # the race is lost in a few rounds out of ten without the wait
        path = tmp_path / f"race-{round_}.sqlite3"
        start = threading.Barrier(4)
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=_open_at_once, args=(path, start, failures)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_bytes_and_none_bind_unchanged_through_the_identity_adapters(tmp_path: Path) -> None:
    import clawdbot_webhooks.store.sqlite_writer  # noqa: F401  (registers the adapters)

    conn = sqlite3.connect(tmp_path / "adapters.sqlite3")
    conn.execute("CREATE TABLE t (b BLOB, n TEXT)")
    conn.execute("INSERT INTO t VALUES (?, ?)", (b"\x00\xffbody", None))
    assert conn.execute("SELECT typeof(b), b, typeof(n), n FROM t").fetchone() == (
        "blob",
        b"\x00\xffbody",
        "null",
        None,
    )


async def test_outcomes_nobody_waits_for_are_written_before_close_or_their_failure_logged(
    storage, tmp_path: Path, caplog
) -> None:
    # A burst of outcomes recorded in one turn of the loop (PostgreSQL writes them as one
    # batch), then the store closes at once: every one is on disk after it.
    url = storage["url"] if storage else f"sqlite:///{tmp_path / 'outcomes.sqlite3'}"
    schema = (storage or {}).get("schema")
    store = open_store(url, schema=schema)
    await store.open()
    records = [_incoming(n) for n in range(50)]
    for record in records:
        assert await store.add_incoming(record, 30)
    for n, record in enumerate(records):
        store.record_outcome(record.id, "done" if n % 2 else "dropped", attempts=1, result=n)
    await store.close()

    reopened = open_store(url, schema=schema)
    await reopened.open()
    for n, record in enumerate(records):
        stored = await reopened.get_incoming(record.id)
        assert stored is not None
        assert (stored.status, stored.result) == ("done" if n % 2 else "dropped", n)
    assert await reopened.count_incoming("pending") == 0
    await reopened.close()

    # An outcome that cannot be written (the store is closed) is reported with its delivery.
    with caplog.at_level("ERROR"):
        reopened.record_outcome(records[0].id, "done", attempts=2)
        deadline = time.monotonic() + 5
        while "could not be written" not in caplog.text:
            assert time.monotonic() < deadline, "the failure was never reported"
            await asyncio.sleep(0.01)
    assert records[0].id in caplog.text


async def test_sqlite_writes_from_the_loop_and_the_writer_thread_land_in_the_order_asked(
    tmp_path: Path,
) -> None:
    # Short writes are committed on the event loop's thread while the writer thread is idle;
    # a write another connection's lock holds up waits in the writer thread instead, without
    # holding up the loop, and the writes asked for after it land after it.
    path = tmp_path / "order.sqlite3"
    async with _opened(f"sqlite:///{path}") as store:
        first = _incoming(1)
        assert await store.add_incoming(first, 30)
        store.record_outcome(first.id, "done", attempts=1, result="one")
        stored = await store.get_incoming(first.id)  # asked for after the outcome: sees it
        assert stored is not None and (stored.status, stored.result) == ("done", "one")

        outside = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        outside.execute("BEGIN IMMEDIATE")
        try:
            held = store.add_incoming(_incoming(2), 30)
            store.record_outcome("dlv_2", "done", attempts=1, result="two")
            later = store.add_incoming(_incoming(3), 30)
            for _ in range(20):  # the loop keeps turning while the lock is held
                await asyncio.sleep(0.01)
            assert not asyncio.ensure_future(held).done()
        finally:
            outside.execute("ROLLBACK")
            outside.close()
        assert await held is True and await later is True
        second = await store.get_incoming("dlv_2")
        assert second is not None and (second.status, second.result) == ("done", "two")
        third = await store.get_incoming("dlv_3")
        assert third is not None and third.status == "pending"
        # The file is free again: the loop commits again.
        assert await store.add_incoming(_incoming(4), 30)


async def test_sqlite_wal_starts_over_while_the_loop_writes(tmp_path: Path) -> None:
    # The loop's connection never checkpoints; the writer thread does, and makes the WAL
    # start over rather than grow with every write.
    path = tmp_path / "wal.sqlite3"
    async with _opened(f"sqlite:///{path}") as store:
        for n in range(6000):  # a commit each, far more than one WAL's worth
            assert await store.add_incoming(_incoming(n), 30)
            store.record_outcome(f"dlv_{n}", "done", attempts=1)
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 24 * 1024 * 1024  # 6,000 commits of a few pages each would be 80 MB
        assert await store.count_incoming("done") >= 5999


async def test_sqlite_wal_starts_over_when_the_writer_thread_commits_alone(tmp_path: Path) -> None:
    # With synchronous FULL every write goes through the writer thread, whose connection
    # leaves checkpoints to the thread itself (between batches, not inside a commit): the
    # WAL must still start over.
    path = tmp_path / "full.sqlite3"
    async with _opened(f"sqlite:///{path}", "FULL") as store:
        for n in range(1500):  # a commit each: a few pages, some 20 MB of WAL in all
            assert await store.add_incoming(_incoming(n), 30)
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 6 * 1024 * 1024
        assert await store.count_incoming("pending") == 1500


async def test_sqlite_wal_starts_over_by_the_size_of_the_bodies_written(tmp_path: Path) -> None:
    # Large bodies bring the checkpoint nearer by their size, not as one row each: the WAL
    # (and the wait while it is copied) stays some MB rather than growing by each body.
    path = tmp_path / "large.sqlite3"
    body = b'{"pad": "' + b"x" * (256 * 1024) + b'"}'
    async with _opened(f"sqlite:///{path}") as store:
        for n in range(200):  # 50 MB of bodies in 200 commits
            record = _incoming(n)
            record.body = body
            assert await store.add_incoming(record, 30)
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 24 * 1024 * 1024
        stored = await store.get_incoming("dlv_199")
        assert stored is not None and stored.body == body


async def test_sqlite_wal_starts_over_by_the_size_of_outgoing_payloads(tmp_path: Path) -> None:
    # Events and their deliveries count by their payloads' size too: an agent's long replies
    # sent to a subscriber leave the WAL some MB, not one event's worth of rows per reply.
    path = tmp_path / "outgoing.sqlite3"
    payload = b'{"pad": "' + b"x" * (128 * 1024) + b'"}'
    async with _opened(f"sqlite:///{path}") as store:
        for n in range(200):  # 50 MB of payloads: the event's and its delivery's, 200 commits
            event = EventRecord(
                f"evt_{n}",
                "agent_response",
                "2026-01-01T00:00:00Z",
                "s",
                None,
                "webhook",
                payload,
                time.time(),
            )
            record = outgoing_record(n)
            record.payload = payload
            assert await store.add_outgoing([record], 30, event) == [f"out_{n}"]
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 24 * 1024 * 1024
        stored = await store.get_event("evt_199")
        assert stored is not None and stored.payload == payload


async def test_bodies_of_a_few_pages_asked_for_together_are_all_kept_and_a_repeat_refused(
    tmp_path: Path,
) -> None:
    # Bodies of some KB are stored apart from their rows, committed together on the loop's
    # connection when asked for in one turn; a repeat among them makes that batch fail there,
    # and the writer thread stores the rest and tells the repeat apart.
    path = tmp_path / "mid.sqlite3"
    records = []
    for n in range(41):
        record = _incoming(n)
        record.body = json.dumps({"n": n, "pad": "y" * 6000}).encode()
        record.dedup_key = f"key-{min(n, 39)}"  # the last one repeats the one before
        records.append(record)
    async with _opened(f"sqlite:///{path}") as store:
        stored = await asyncio.gather(*(store.add_incoming(r, 30, dedup_since=0) for r in records))
        assert stored == [True] * 40 + [False]
        for record in records[:40]:
            found = await store.get_incoming(record.id)
            assert found is not None and found.body == record.body
        assert await store.get_incoming("dlv_40") is None


async def test_failed_incoming_attempts_are_numbered_on_across_replays(
    storage, tmp_path: Path
) -> None:
    from clawdbot_webhooks.store import Attempt

    url = storage["url"] if storage else f"sqlite:///{tmp_path / 'history.sqlite3'}"
    async with _opened(url, schema=(storage or {}).get("schema")) as store:
        record = _incoming(1)
        assert await store.add_incoming(record, 30)
        for error in ("first run", "replayed"):
            # A replay starts counting its attempts at 1 again; the history goes on.
            failed = Attempt(record.id, 1, time.time(), None, 2.5, None, error)
            await store.finish_incoming(record.id, "dead", attempts=1, error=error, failed=failed)
            if error == "first run":
                assert await store.revive([record.id]) == [record.id]
                # Run again as the pipeline runs it: claimed first.
                assert [r.id for r in await store.claim_incoming(10, 30)] == [record.id]
        history = await store.attempts(record.id)
        assert [(a.number, a.error) for a in history] == [(1, "first run"), (2, "replayed")]
        # What is shown counts both rounds, though the row's count started over.
        [letter] = await store.dead_letters()
        assert letter.attempts == 2
        [listed] = await store.list_deliveries("incoming", DeliveryQuery(limit=5))
        assert listed.attempts == 2
        assert all(a.latency_ms == 2.5 and a.status is None for a in history)


async def test_an_outcome_with_text_no_column_holds_is_recorded(storage, tmp_path: Path) -> None:
    """A plugin's or a payload's text may hold a lone surrogate (no UTF-8 holds it) or a NUL
    (PostgreSQL's text refuses it): the outcome is recorded all the same, each written as its
    escape, so the delivery is counted and does not run again and again."""
    url = storage["url"] if storage else f"sqlite:///{tmp_path / 'odd.sqlite3'}"
    async with _opened(url, schema=(storage or {}).get("schema")) as store:
        for n, status in ((1, "dead"), (2, "done")):
            record = _incoming(n)
            assert await store.add_incoming(record, 30)
            await store.finish_incoming(
                record.id, status, attempts=1, error="bad \ud800 te\x00xt", message="sent \udcff"
            )
            stored = await store.get_incoming(record.id)
            assert stored is not None and stored.status == status
            assert stored.last_error == "bad \\ud800 te\\x00xt"


async def test_dead_letter_and_inspection_queries_answer_alike_on_both_backends(
    tmp_path: Path, storage: dict[str, Any] | None
) -> None:
    """The queries both backends share: dead letters by age, revive, requeue, purges (their
    attempts and large bodies go with them), counts, per-endpoint latest errors, throughput."""
    from clawdbot_webhooks.store import INLINE_BODY_BYTES, Attempt

    url = f"sqlite:///{tmp_path / 's.sqlite3'}" if storage is None else storage["url"]
    store = open_store(url, schema=None if storage is None else storage["schema"])
    await store.open()
    try:
        records = [_incoming(n) for n in range(4)]
        records[1].body = b"x" * (INLINE_BODY_BYTES + 1)  # kept apart from its row on SQLite
        for n, record in enumerate(records):
            record.received_at = 1000.0 + n
            assert await store.add_incoming(record, 30)
        failed = Attempt("dlv_1", 0, 1100.0, 500, 1.0, "no", "old error")
        await store.finish_incoming("dlv_0", "done", attempts=1)
        await store.finish_incoming("dlv_1", "dead", attempts=2, error="dead 1", failed=failed)
        await store.finish_incoming("dlv_2", "dead", attempts=1, error="dead 2")
        retry_at = time.time() + 2  # waiting for its retry while the counts are taken
        await store.finish_incoming("dlv_3", "pending", attempts=1, retry_at=retry_at)
        outgoing = [outgoing_record(n) for n in range(2)]
        assert await store.add_outgoing(outgoing, 30) == ["out_0", "out_1"]
        await store.finish_outgoing_many(
            [
                OutgoingOutcome(
                    "out_0",
                    "dead",
                    1,
                    "gone",
                    attempt=Attempt("out_0", 0, 1.0, 410, 1.0, "", "gone"),
                ),
                OutgoingOutcome(
                    "out_1",
                    "dead",
                    1,
                    "late",
                    attempt=Attempt("out_1", 0, 2.0, 503, 1.0, "", "late"),
                ),
            ]
        )

        assert [d.id for d in await store.dead_letters()] == ["dlv_1", "dlv_2", "out_0", "out_1"]
        assert [d.id for d in await store.dead_letters(since=1001.5)] == ["dlv_2", "out_0", "out_1"]
        counts = await store.queue_counts()
        assert (counts["incoming_waiting"], counts["incoming_dead"]) == (1, 2)
        assert (counts["outgoing_waiting"], counts["outgoing_dead"]) == (0, 2)

        stats = {(s["kind"], s["target"]): s for s in await store.delivery_stats(0)}
        assert stats[("incoming", "h")]["statuses"] == {"done": 1, "dead": 2, "pending": 1}
        assert stats[("outgoing", "sub")]["attempts"] == 2
        assert stats[("outgoing", "sub")]["succeeded"] == 0
        assert stats[("outgoing", "sub")]["last_error"] == "late"  # the later of the two
        assert stats[("outgoing", "sub")]["last_success_at"] is None  # no 2xx attempt
        assert stats[("incoming", "h")]["last_success_at"] is not None  # dlv_0 is done
        finished = await store.throughput(time.time() - 60, 3600)
        assert {(r["kind"], r["status"], r["count"]) for r in finished} == {
            ("incoming", "done", 1),
            ("incoming", "dead", 2),
            ("outgoing", "dead", 2),
        }
        assert all(r["at"] % 3600 == 0 for r in finished)
        bucket = time.time() / 1.7  # rows finished by now are 70 % into their second bucket
        assert {r["at"] for r in await store.throughput(0, bucket)} == {bucket}

        # Each id revived once, in the order asked; ids that are not dead letters are skipped.
        assert await store.revive(["out_1", "dlv_2", "out_1", "dlv_0", "nope"]) == [
            "out_1",
            "dlv_2",
        ]
        revived = await store.get_outgoing("out_1")
        assert revived is not None and revived.status == "pending"
        assert await store.requeue("dlv_0", "incoming")
        assert not await store.requeue("dlv_0", "incoming")  # pending already
        assert not await store.requeue("dlv_0", "outgoing")  # not an outgoing delivery

        assert await store.purge_dead_ids(["dlv_1", "dlv_3", "out_0"]) == 2  # dlv_3 is pending
        assert await store.get_incoming("dlv_1") is None
        assert await store.attempts("dlv_1") == [] and await store.attempts("out_0") == []
        if storage is None:
            conn = sqlite3.connect(tmp_path / "s.sqlite3")
            assert conn.execute("SELECT COUNT(*) FROM inbox_bodies").fetchone() == (0,)
            conn.close()
        assert await store.get_incoming("dlv_3") is not None
        # Its retry, claimed as the pipeline claims it once due, fails for good.
        await asyncio.sleep(retry_at - time.time())
        assert "dlv_3" in [r.id for r in await store.claim_incoming(10, 30)]
        await store.finish_incoming("dlv_3", "dead", attempts=2, error="dead 3")
        assert await store.purge_dead(before=1003.0) == 0  # dlv_3 came in at 1003
        assert await store.purge_dead() == 1
        assert await store.dead_letters() == []
    finally:
        await store.close()


def test_a_write_that_finishes_after_its_loop_closed_fails_nobody(tmp_path: Path) -> None:
    # A process that stops without closing its store: the writer thread finishes what was
    # queued and has nobody to tell, which is no error of its own.
    from clawdbot_webhooks.store.sqlite_writer import SQLiteWriter

    errors: list[threading.ExceptHookArgs] = []
    hook, threading.excepthook = threading.excepthook, errors.append
    loop = asyncio.new_event_loop()
    writer = SQLiteWriter(tmp_path / "w.sqlite3", "CREATE TABLE IF NOT EXISTS t (n INTEGER);")
    try:
        loop.run_until_complete(writer.open())
        gate = threading.Event()

        def slow(conn: sqlite3.Connection) -> None:
            gate.wait(5)
            conn.execute("INSERT INTO t VALUES (1)")

        writer._do(slow)  # a function: the writer thread runs it
        loop.close()
        gate.set()
        writer._queue.put(None)
        assert writer._thread is not None
        writer._thread.join(5)
    finally:
        threading.excepthook = hook
    assert errors == []
    with sqlite3.connect(tmp_path / "w.sqlite3") as conn:
        assert conn.execute("SELECT n FROM t").fetchall() == [(1,)]


def test_a_schema_name_with_capitals_is_refused_when_the_config_loads() -> None:
    """PostgreSQL folds a name on the search path to lower case: "Hooks" would be made as one
    schema and searched as another (or as some other deployment's "hooks")."""
    from clawdbot_webhooks.config import ConfigError, build_settings
    from clawdbot_webhooks.plugins import load_plugins

    raw = {"storage": {"url": "postgresql://postgres@127.0.0.1:5432/test", "schema": "Hooks"}}
    with pytest.raises(ConfigError) as caught:
        build_settings(raw, load_plugins(), None)
    assert any(e.startswith("webhooks.storage.schema: lower-case") for e in caught.value.errors)


async def test_a_role_given_its_schema_needs_no_create_privilege_on_the_database() -> None:
    """A DBA may make the schema and hand it to a role that cannot create schemas: the store
    finds it and uses it (creating it, even "if not exists", takes that privilege)."""
    import asyncpg

    from tests.conftest import POSTGRES_URL, drop_schema, require_postgres

    require_postgres()
    role, schema = f"cw_role_{uuid.uuid4().hex[:8]}", f"cw_given_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
        url = POSTGRES_URL.replace("postgres@", f"{role}@", 1)
        async with _opened(url, schema=schema) as store:
            record = _incoming(1)
            assert await store.add_incoming(record, 30)
            assert (await store.get_incoming(record.id)) is not None
    finally:
        drop_schema(schema)
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_a_lock_on_the_outbox_does_not_hold_up_the_inbox_leases() -> None:
    """The heartbeat renews each table on its own, waiting for a lock a third of the lease
    at most: with the outbox locked (an index being built, say), the inbox leases are still
    renewed, and the outbox's renewal gives up before its leases run out."""
    import asyncpg

    from tests.conftest import POSTGRES_URL, drop_schema, require_postgres

    require_postgres()
    schema = f"cw_locked_{uuid.uuid4().hex[:8]}"
    try:
        async with _opened(POSTGRES_URL, schema=schema) as store:
            record = _incoming(1)
            assert await store.add_incoming(record, 0.5)
            await store.add_outgoing([outgoing_record(1)], 0.5)
            locker = await asyncpg.connect(POSTGRES_URL)
            try:
                lock = locker.transaction()
                await lock.start()
                await locker.execute(f'LOCK TABLE "{schema}".outbox IN SHARE MODE')
                started = time.monotonic()
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await store.renew_leases([record.id], ["out_1"], 3.0)
                assert time.monotonic() - started < 3.0  # gave up before the leases ran out
                await lock.rollback()
            finally:
                await locker.close()
            [(until,)] = await _pg(schema, "SELECT lease_until FROM inbox WHERE id=$1", record.id)
            assert until > time.time() + 1.5  # renewed for about 3 s
    finally:
        drop_schema(schema)


async def _pg(schema: str, query: str, *args: Any) -> list[Any]:
    import asyncpg

    from tests.conftest import POSTGRES_URL

    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def test_a_process_whose_lease_was_taken_over_leaves_the_delivery_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Process A's lease runs out (a pause longer than the lease) and B takes the delivery
    over. A's late outcomes (a retry schedule, a "done" recorded in a batch, an outgoing
    attempt) must not touch B's row: B's lease stays, and B's outcome is the one kept.
    Otherwise A's retry would make a delivery B finished pending again, to run once more."""
    from tests.conftest import drop_schema, require_postgres

    require_postgres()
    schema = f"cw_owner_{uuid.uuid4().hex[:8]}"
    try:
        async with _opened(POSTGRES_URL, schema=schema) as b:
            async with _opened(POSTGRES_URL, schema=schema) as a:
                record = _incoming(1)
                assert await a.add_incoming(record, 0.3)
                await a.add_outgoing([outgoing_record(1)], 0.3)
                await asyncio.sleep(0.5)  # A's leases run out
                assert [r.id for r in await b.claim_incoming(10, 30)] == [record.id]
                assert [r.id for r in await b.claim_outgoing(10, 30)] == ["out_1"]
                caplog.clear()
                await a.finish_incoming(
                    record.id, "pending", attempts=1, error="late", retry_at=time.time() + 60
                )
                a.record_outcome(record.id, "done", attempts=1, result={"late": True})
                assert await a.finish_outgoing_many([OutgoingOutcome("out_1", "done", 1)]) == [
                    "out_1"
                ]
            # A is closed: its batched outcome is written (or refused) by now.
            rows = await _pg(
                schema,
                "SELECT status, attempts, lease_owner, result FROM inbox WHERE id=$1",
                record.id,
            )
            assert rows == [("pending", 0, b.owner, None)]
            rows = await _pg(schema, "SELECT status, lease_owner FROM outbox WHERE id='out_1'")
            assert rows == [("pending", b.owner)]
            lost = [r.getMessage() for r in caplog.records if "another process" in r.getMessage()]
            assert len(lost) == 3, lost
            assert all(record.id in m or "out_1" in m for m in lost)
            # B's own outcomes are recorded as ever.
            b.record_outcome(record.id, "done", attempts=1, result={"by": "b"})
            assert await b.finish_outgoing_many([OutgoingOutcome("out_1", "done", 1)]) == []
            await b._outcomes.written()
            [(status, result)] = await _pg(
                schema, "SELECT status, result FROM inbox WHERE id=$1", record.id
            )
            assert (status, json.loads(result)) == ("done", {"by": "b"})
            rows = await _pg(schema, "SELECT status FROM outbox WHERE id='out_1'")
            assert rows == [("done",)]
    finally:
        drop_schema(schema)


async def test_an_outgoing_retry_taken_over_by_another_process_is_left_to_it(
    make_sink, tmp_path: Path
) -> None:
    """A process waiting to retry an outgoing delivery whose lease ran out meanwhile (another
    process took it over) learns so from its next attempt's refused outcome and stops: the
    endpoint is not sent the same event again and again until the first one's retries run
    out."""
    from clawdbot_webhooks.testing import serve
    from tests.conftest import drop_schema, require_postgres

    require_postgres()
    schema = f"cw_retry_{uuid.uuid4().hex[:8]}"
    sink = await make_sink(default=503)
    retry = {"maxAttempts": 40, "initialDelay": 0.2, "backoff": "constant", "jitter": False}
    hooks = {
        "storage": {"url": POSTGRES_URL, "schema": schema, "leaseSeconds": 30},
        "outgoing": [{"id": "s1", "url": sink.url, "events": ["*"], "retry": retry}],
    }
    try:
        async with serve(hooks, state_dir=tmp_path / "a") as a:
            await a.runtime.bus.publish(Event("agent_response", {"text": "hi"}, session="s"))
            await sink.wait_for(2)
            # A pause longer than the lease: it runs out, and process B takes the row over.
            await _pg(schema, "UPDATE outbox SET lease_until=0, next_attempt_at=0")
            async with _opened(POSTGRES_URL, schema=schema) as b:
                [taken] = await b.claim_outgoing(10, 30)
                sent = len(sink.received)
                await asyncio.sleep(2.0)  # ten of A's retry periods
                # A's attempt under way when B took over, and no more.
                assert len(sink.received) <= sent + 1
                rows = await _pg(schema, "SELECT status, lease_owner FROM outbox")
                assert rows == [("pending", b.owner)]
                assert taken.id not in a.runtime.outbox._finisher.taken_over  # forgotten
    finally:
        drop_schema(schema)

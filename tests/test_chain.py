"""Following one webhook to everything it caused, and back, on both backends: the events a
delivery caused (stored, or made from its row when nobody took them), each event's outgoing
deliveries,
an outgoing delivery's event and cause, a session's timeline, retention of events, and the
migration that adds them to a store from before."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any
from urllib.parse import quote

import asyncpg
from clawdbot_webhooks_hookspecs import new_id
from click.testing import CliRunner, Result

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.events import derived_event_id
from clawdbot_webhooks.outgoing.outbox import outbox_id
from clawdbot_webhooks.sessions import ephemeral_session
from clawdbot_webhooks.store import EventQuery, EventRecord, IncomingRecord, open_store
from clawdbot_webhooks.store.postgres_schema import MIGRATIONS
from clawdbot_webhooks.store.rows import LASTING_SESSION, events_of_session
from clawdbot_webhooks.store.sqlite_schema import MIGRATIONS_TABLE, SQLITE_MIGRATIONS
from clawdbot_webhooks.web.admin.chain import made_events
from tests.conftest import POSTGRES_URL, with_storage, write_config

BACKENDS = ["sqlite", "postgres"]

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INGRESS = "ingress-token-0123"
ONCE = {"maxAttempts": 1, "initialDelay": 0.05, "jitter": False}


def config(a_url: str, b_url: str) -> dict[str, Any]:
    return {
        "admin": {"enabled": True, "token": TOKEN},
        "incoming": {"eventIngress": {"token": INGRESS}},
        "handlers": [
            {
                "id": "chat",
                "action": "run_agent",
                "agentId": "a",
                "template": "hi {{n}}",
                "verify": {"type": "none"},
            }
        ],
        "outgoing": [
            {"id": "a", "url": a_url, "events": ["message_received", "agent_response"]},
            # A secret in the URL: shown masked.
            {"id": "b", "url": b_url + "?token=s3cr3t-value", "events": ["agent_response"]},
        ],
    }


async def call(srv: Any, path: str) -> tuple[int, Any]:
    async with srv.session.get(srv.base + path, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def settled(srv: Any, ids: list[str]) -> None:
    """Until every one of these outgoing deliveries is recorded done."""
    deadline = time.monotonic() + 10
    while True:
        rows = [await srv.runtime.store.get_outgoing(i) for i in ids]
        if all(r is not None and r.status == "done" for r in rows):
            return
        assert time.monotonic() < deadline, "outgoing deliveries never finished"
        await asyncio.sleep(0.05)


async def test_a_webhook_is_followed_to_everything_it_caused_and_back(
    start_server, make_sink
) -> None:
    a, b = await make_sink(), await make_sink()
    srv = await start_server(config(a.url, b.url))
    status, answer = await srv.post("chat", {"n": 1})
    assert status == 202
    delivery = answer["id"]
    await srv.idle()
    await a.wait_for(2)
    await b.wait_for(1)

    status, incoming = await call(srv, f"/admin/api/incoming/{delivery}")
    assert status == 200
    caused = incoming["caused"]
    # Every event the run published, in order, whether or not anyone subscribes to it.
    assert [e["type"] for e in caused] == [
        "session_started",
        "message_received",
        "agent_response",
        "session_ended",
    ]
    session = incoming["session"]
    assert session.startswith("hook:")
    for event in caused:
        assert event["causation"] == delivery and event["source"] == "webhook"
        assert event["session"] == session and event["timestamp"].endswith("Z")
        assert set(event) == {
            "id", "type", "timestamp", "session", "causation", "source", "deliveries"
        }  # fmt: skip
    started, received, response, ended = caused
    assert started["deliveries"] == [] and ended["deliveries"] == []
    # Nobody takes the session's two: they are made from the delivery's row, not stored, with
    # the ids they would have been sent with.
    stored = await srv.runtime.store.list_events(EventQuery(causation=delivery))
    assert {e.type for e in stored} == {"message_received", "agent_response"}
    assert started["id"] == derived_event_id(delivery, session, "session_started")
    assert ended["id"] == derived_event_id(delivery, session, "session_ended")
    ids = [d["id"] for e in caused for d in e["deliveries"]]
    assert ids == [
        outbox_id(received["id"], "a"),
        outbox_id(response["id"], "a"),
        outbox_id(response["id"], "b"),
    ]
    await settled(srv, ids)
    _, incoming = await call(srv, f"/admin/api/incoming/{delivery}")
    by_sub = {d["subscription"]: d for d in incoming["caused"][2]["deliveries"]}
    assert set(by_sub) == {"a", "b"}
    assert by_sub["a"]["url"] == a.url
    assert by_sub["b"]["url"] == f"{b.url}?token=***"
    for d in by_sub.values():
        assert d["status"] == "done" and d["attempts"] == 1 and d["last_error"] is None
        assert set(d) == {
            "id", "subscription", "url", "status", "attempts", "last_error", "created_at"
        }  # fmt: skip

    # And back: each outgoing delivery names its event and the delivery that caused it.
    for event in (received, response):
        for d in event["deliveries"]:
            status, out = await call(srv, f"/admin/api/outgoing/{d['id']}")
            assert status == 200 and out["causation"] == delivery
            assert out["event"] == {
                "id": event["id"],
                "type": event["type"],
                "timestamp": event["timestamp"],
                "source": "webhook",
                "causation": delivery,
            }
            assert json.loads(out["payload"])["id"] == event["id"]

    # Listings: outgoing summaries carry the cause, both directions the session.
    _, outgoing = await call(srv, "/admin/api/outgoing")
    assert {o["id"]: o["causation"] for o in outgoing["items"]} == dict.fromkeys(ids, delivery)
    assert {o["session"] for o in outgoing["items"]} == {session}
    _, listed = await call(srv, "/admin/api/incoming")
    [item] = listed["items"]
    assert item["session"] == session and "causation" not in item

    # One event, with its payload as subscribers get it.
    status, shown = await call(srv, f"/admin/api/events/{quote(started['id'])}")
    assert status == 200
    assert shown == {
        **started,
        "payload": {
            "id": started["id"],
            "type": "session_started",
            "timestamp": started["timestamp"],
            "session": session,
            "data": {"hook": "chat", "mode": "ephemeral"},
            "causation": delivery,
        },
    }
    status, shown = await call(srv, f"/admin/api/events/{response['id']}")
    assert status == 200 and [d["id"] for d in shown["deliveries"]] == ids[1:]
    assert shown["payload"]["type"] == "agent_response" and shown["payload"]["id"] == response["id"]

    # The session, in time order: the delivery, then its events and their deliveries.
    status, page = await call(srv, f"/admin/api/sessions/{quote(session, safe='')}")
    assert status == 200 and page["session"] == session and page["next_cursor"] is None
    items = page["items"]
    assert items[0] == {
        "kind": "incoming",
        "id": delivery,
        "at": incoming["created_at"],
        "hook": "chat",
        "status": "done",
        "attempts": 1,
        "last_error": None,
    }
    assert [i["id"] for i in items if i["kind"] == "event"] == [e["id"] for e in caused]
    assert sorted(i["id"] for i in items if i["kind"] == "outgoing") == sorted(ids)
    assert [i["at"] for i in items] == sorted(i["at"] for i in items)
    first_out = next(i for i in items if i["kind"] == "outgoing")
    assert first_out["causation"] == delivery and first_out["status"] == "done"
    assert items.index(first_out) > [i["id"] for i in items].index(first_out["event_id"])
    # Paged, the same items, each once.
    paged: list[Any] = []
    cursor = ""
    while True:
        status, page = await call(srv, f"/admin/api/sessions/{session}?limit=3{cursor}")
        assert status == 200
        paged += page["items"]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert paged == items


async def test_event_listing_filters_pages_and_refuses_bad_input(start_server, make_sink) -> None:
    a, b = await make_sink(), await make_sink()
    srv = await start_server(config(a.url, b.url))
    first = (await srv.post("chat", {"n": 1}))[1]["id"]
    second = (await srv.post("chat", {"n": 2}))[1]["id"]
    await srv.idle()
    await a.wait_for(4)

    # The stored events: an ephemeral session's two nobody took are not rows of their own
    # (the chain makes them from the delivery's row).
    status, mine = await call(srv, f"/admin/api/events?causation={first}")
    assert status == 200 and mine["next_cursor"] is None
    assert [e["type"] for e in mine["items"]] == ["agent_response", "message_received"]
    assert {e["causation"] for e in mine["items"]} == {first}
    status, replies = await call(srv, "/admin/api/events?type=agent_response")
    assert {e["causation"] for e in replies["items"]} == {first, second}
    session = mine["items"][0]["session"]
    _, of_session = await call(srv, f"/admin/api/events?session={quote(session)}")
    assert [e["id"] for e in of_session["items"]] == [e["id"] for e in mine["items"]]
    _, none_yet = await call(srv, f"/admin/api/events?since={time.time() + 60}")
    assert none_yet == {"items": [], "next_cursor": None}

    seen: list[str] = []
    cursor = ""
    while True:
        status, page = await call(srv, f"/admin/api/events?limit=3{cursor}")
        assert status == 200 and len(page["items"]) <= 3
        seen += [e["id"] for e in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    _, everything = await call(srv, "/admin/api/events?limit=500")
    assert seen == [e["id"] for e in everything["items"]] and len(seen) == 4

    for path, message in [
        ("/admin/api/events?cursor=nonsense", "cursor: not a cursor from a previous page"),
        ("/admin/api/events?limit=0", "limit: must be between 1 and 500"),
        ("/admin/api/events?since=whenever", "since: expected an ISO 8601 time"),
        ("/admin/api/sessions/x?cursor=bm9wZQ", "cursor: not a cursor from a previous page"),
        ("/admin/api/sessions/x?limit=many", "limit: not a number"),
    ]:
        status, body = await call(srv, path)
        assert status == 400 and body["ok"] is False and body["error"].startswith(message), path
    status, body = await call(srv, "/admin/api/events/evt_nothing")
    assert status == 404 and body == {"ok": False, "error": "no such event"}
    status, body = await call(srv, "/admin/api/sessions/hook%3Anothing")
    assert status == 200 and body == {"session": "hook:nothing", "items": [], "next_cursor": None}


async def test_bridge_events_show_their_source_and_deliveries(start_server, make_sink) -> None:
    a, b = await make_sink(), await make_sink()
    srv = await start_server(config(a.url, b.url))
    body = {
        "id": "call-1",
        "hook": "agent_end",
        "timestamp": 1_700_000_000_000,
        "event": {"text": "reply", "success": True},
        "context": {"sessionKey": "agent:ops:main"},
    }
    headers = {"Authorization": f"Bearer {INGRESS}"}
    async with srv.session.post(f"{srv.base}/events/ingest", json=body, headers=headers) as r:
        assert r.status == 202
        event_id = (await r.json())["id"]
    await b.wait_for(1)
    status, shown = await call(srv, f"/admin/api/events/{event_id}")
    assert status == 200
    assert shown["source"] == "bridge" and shown["causation"] is None
    assert shown["session"] == "agent:ops:main" and shown["type"] == "agent_response"
    assert sorted(d["subscription"] for d in shown["deliveries"]) == ["a", "b"]
    out = shown["deliveries"][0]["id"]
    _, view = await call(srv, f"/admin/api/outgoing/{out}")
    assert view["causation"] is None and view["event"]["source"] == "bridge"
    # Its session's timeline: the event and its deliveries, a key with ``:`` in the URL.
    _, page = await call(srv, "/admin/api/sessions/agent:ops:main")
    assert [i["kind"] for i in page["items"]] == ["event", "outgoing", "outgoing"]


async def test_retention_removes_old_events(start_server) -> None:
    srv = await start_server({"admin": {"enabled": True, "token": TOKEN}, "handlers": []})
    store = srv.runtime.store
    now = time.time()

    def event(name: str, at: float) -> EventRecord:
        payload = json.dumps({"id": name}).encode()
        return EventRecord(name, "error", "2026-01-01T00:00:00Z", None, None, "plugin", payload, at)

    await store.add_outgoing([], 0, event("evt_old", now - 3600))
    await store.add_outgoing([], 0, event("evt_new", now))
    assert await store.get_event("evt_old") is not None
    await store.prune_finished(now - 60)
    assert await store.get_event("evt_old") is None
    assert await store.get_event("evt_new") is not None
    status, body = await call(srv, "/admin/api/events/evt_old")
    assert status == 404 and body["error"] == "no such event"


async def test_session_index_holds_lasting_sessions_only(tmp_path, storage) -> None:
    """Events of a lasting session are found through ``events_session``; an ephemeral one's
    random key stays out of that index, and its events are still found (without it)."""
    lasting, ephemeral = "github:claw", ephemeral_session()
    if storage is None:
        store = open_store(f"sqlite:///{tmp_path / 'events.sqlite3'}")
    else:
        store = open_store(POSTGRES_URL, schema=storage["schema"])
    await store.open()
    try:
        now = time.time()
        for n, session in enumerate([lasting, ephemeral, lasting, None]):
            event = EventRecord(
                f"evt_{n}", "session_started", "2026-01-01T00:00:00Z", session, f"dlv_{n}",
                "webhook", b"{}", now + n,
            )  # fmt: skip
            await store.add_outgoing([], 0, event)
        for session, ids in ((lasting, ["evt_2", "evt_0"]), (ephemeral, ["evt_1"])):
            found = await store.list_events(EventQuery(session=session))
            assert [e.id for e in found] == ids
            page = await store.session_timeline(session, None, 10)
            assert [i.id for i in page] == ids[::-1]
        plan = {}
        for session in (lasting, ephemeral):
            sql = f"SELECT id FROM events WHERE {events_of_session(session)}"
            if storage is None:
                with sqlite3.connect(tmp_path / "events.sqlite3") as conn:
                    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", (session,)).fetchall()
                    plan[session] = " ".join(str(r[-1]) for r in rows)
                    indexed = conn.execute(
                        "SELECT count(*) FROM events INDEXED BY events_session "
                        f"WHERE {events_of_session(lasting)} AND session IS NOT NULL",
                        (lasting,),
                    ).fetchone()[0]
                    assert indexed == 2
            else:
                conn = await asyncpg.connect(POSTGRES_URL)
                try:
                    await conn.execute(f"SET search_path TO {storage['schema']}")
                    await conn.execute("SET enable_seqscan = off")
                    rows = await conn.fetch(f"EXPLAIN {sql.replace('?', '$1')}", session)
                    plan[session] = " ".join(r[0] for r in rows)
                finally:
                    await conn.close()
        assert "events_session" in plan[lasting]
        assert "events_session" not in plan[ephemeral]
    finally:
        await store.close()


def test_the_migrations_index_what_the_queries_name() -> None:
    """The index's condition is written into the migrations, the query's in ``rows``: equal,
    or the planner (SQLite's above all) no longer uses the index."""
    [sqlite] = [m for m in SQLITE_MIGRATIONS if m.version == 8]
    [postgres] = [m for m in MIGRATIONS if m.version == 3]
    for migration in (sqlite, postgres):
        assert f"WHERE {LASTING_SESSION};" in " ".join(migration.sql.split())


async def test_session_events_are_made_only_for_a_run_of_an_ephemeral_session(
    start_server,
) -> None:
    srv = await start_server(
        {
            "handlers": [
                {"id": "once", "action": "wake", "template": "x", "verify": {"type": "none"}},
                {
                    "id": "kept",
                    "action": "wake",
                    "template": "x",
                    "sessionMode": "persistent",
                    "sessionKey": "hook:{{ key }}",
                    "verify": {"type": "none"},
                },
            ]
        }
    )
    rt = srv.runtime

    def record(hook: str, session: str, attempts: int, finished: float | None) -> IncomingRecord:
        return IncomingRecord(
            new_id("dlv"), hook, 100.0, "application/json", b"{}", {}, {}, "127.0.0.1",
            session, attempts=attempts, finished_at=finished,
        )  # fmt: skip

    def made(delivery: IncomingRecord) -> list[tuple[str, float]]:
        return [(e.type, e.created_at) for e in made_events(rt, delivery)]

    key = ephemeral_session()
    assert made(record("once", key, 0, None)) == []  # not run yet
    assert made(record("once", key, 0, 105.0)) == []  # never run: dead before it could
    assert made(record("once", key, 1, None)) == [("session_started", 100.0)]  # to be retried
    assert made(record("once", key, 1, 105.0)) == [
        ("session_started", 100.0),
        ("session_ended", 105.0),
    ]
    # A message kept in the row: its event, next after the session's start.
    said = record("once", key, 1, None)
    said.message = "x"
    assert made(said) == [("session_started", 100.0), ("message_received", 100.000001)]
    # A lasting session whose key has the ephemeral shape: its handler says which it is.
    assert made(record("kept", key, 1, 105.0)) == []
    # The handler gone: the key's shape says.
    assert made(record("gone", key, 1, 105.0)) != []
    assert made(record("gone", "github:claw", 1, 105.0)) == []


async def test_deliveries_are_found_by_the_start_of_their_id_in_any_collation(
    tmp_path, storage
) -> None:
    """How an event made from a delivery's row is found by its id: the deliveries received in
    the same millisecond. PostgreSQL compares with the database's collation; an ICU one (not
    the C one the tests run with) ignores characters outside the ids' alphabet."""
    if storage is None:
        store = open_store(f"sqlite:///{tmp_path / 'ids.sqlite3'}")
    else:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            icu = await conn.fetchval(
                "SELECT count(*) FROM pg_collation WHERE collname = 'en-US-x-icu'"
            )
        finally:
            await conn.close()
        store = open_store(POSTGRES_URL, schema=storage["schema"])
    await store.open()
    try:
        if storage is not None and icu:
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(
                    f"ALTER TABLE {storage['schema']}.inbox "
                    'ALTER COLUMN id TYPE TEXT COLLATE "en-US-x-icu"'
                )
            finally:
                await conn.close()
        head = "01m9abcdef"
        ids = [f"dlv_{head}{tail}" for tail in ("0" * 16, "zz" * 8, "7k" * 8)]
        others = [f"dlv_01m9abcdeg{'0' * 16}", f"dlv_01m9abcdee{'z' * 16}"]
        for delivery_id in ids + others:
            stored = IncomingRecord(
                delivery_id, "h", 1.0, "application/json", b"{}", {}, {}, "127.0.0.1", "s"
            )
            assert await store.add_incoming(stored, 30.0)
        assert await store.incoming_ids_from(f"dlv_{head}") == sorted(ids)
    finally:
        await store.close()


def _old_payload(cause: str, data: dict[str, Any] | None = None) -> bytes:
    event = {"id": "evt_1", "type": "agent_response", "session": "s", "data": data or {}}
    return json.dumps(
        {**event, "causation": cause}, separators=(",", ":"), ensure_ascii=False
    ).encode()


async def test_outgoing_rows_from_before_get_their_cause(tmp_path, storage) -> None:
    """The migration that adds events takes an old row's cause from its payload; a body a
    template made, without one, stays without, also one that is no text at all (a NUL, bytes
    that are not UTF-8): PostgreSQL cannot make text of those."""
    rows = [
        ("out_1", _old_payload("dlv_1")),
        ("out_2", b"plain text from a template"),
        ("out_3", b'a NUL \x00 and \xff\xfe from a template, "causation":"dlv_3"}'),
        ("out_4", _old_payload("dlv_4", {"text": "Réponse: ça marche"})),
        ("out_5", _old_payload("évt-caused")),  # a plugin's event may name any cause
    ]
    insert = (
        "INSERT INTO outbox (id, event_id, subscription_id, event_type, session, payload, "
        "created_at, status) VALUES (?, 'evt_1', 'sub', 'agent_response', 's', ?, 0, 'done')"
    )
    if storage is None:
        path = tmp_path / "old.sqlite3"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(MIGRATIONS_TABLE)
        for m in SQLITE_MIGRATIONS[:6]:
            conn.executescript(m.sql)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (m.version, m.name))
        conn.executemany(insert, rows)
        conn.close()
        store = open_store(f"sqlite:///{path}")
    else:
        schema = storage["schema"]
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
            await conn.execute(MIGRATIONS_TABLE.replace("REAL", "DOUBLE PRECISION"))
            await conn.execute(MIGRATIONS[0].sql)
            await conn.execute("INSERT INTO schema_migrations VALUES (1, 'old', 0)")
            await conn.executemany(
                insert.replace("?, 'evt_1'", "$1, 'evt_1'").replace(
                    ", ?, 0, 'done'", ", $2, 0, 'done'"
                ),
                rows,
            )
        finally:
            await conn.close()
        store = open_store(POSTGRES_URL, schema=schema)
    await store.open()
    try:
        first, second = await store.get_outgoing("out_1"), await store.get_outgoing("out_2")
        assert first is not None and first.causation == "dlv_1"
        assert second is not None and second.causation is None
        third = await store.get_outgoing("out_3")
        assert third is not None and third.causation is None
        fourth = await store.get_outgoing("out_4")
        assert fourth is not None and fourth.causation == "dlv_4"
        fifth = await store.get_outgoing("out_5")
        assert fifth is not None and fifth.causation == "évt-caused"
    finally:
        await store.close()


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)


async def test_deliveries_show_prints_the_chain_both_ways(
    start_server, make_sink, state_dir, storage, tmp_path
) -> None:
    a, b = await make_sink(), await make_sink()
    webhooks = config(a.url, b.url)
    srv = await start_server(webhooks)
    delivery = (await srv.post("chat", {"n": 1}))[1]["id"]
    await srv.idle()
    await a.wait_for(2)
    await b.wait_for(1)
    _, incoming = await call(srv, f"/admin/api/incoming/{delivery}")
    outgoing = [d["id"] for e in incoming["caused"] for d in e["deliveries"]]
    await settled(srv, outgoing)
    path = write_config(
        tmp_path / "config.json5", with_storage({"stateDir": str(state_dir), **webhooks}, storage)
    )

    shown = await cli("deliveries", "show", delivery, "--config", str(path))
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"incoming {delivery}  hook chat  done  attempts 1  session hook:")
    events = [line.split()[1] for line in lines if line.startswith("  event ")]
    assert events == ["session_started", "message_received", "agent_response", "session_ended"]
    sent = [line.split() for line in lines if line.startswith("    outgoing ")]
    assert [(w[1], w[2], w[4]) for w in sent] == [
        (outgoing[0], "a", "done"),
        (outgoing[1], "a", "done"),
        (outgoing[2], "b", "done"),
    ]
    assert f"{b.url}?token=***" in shown.output and "s3cr3t" not in shown.output

    back = await cli("deliveries", "show", outgoing[2], "--config", str(path))
    assert back.exit_code == 0, back.output
    head = back.output.splitlines()
    assert head[0].startswith(f"outgoing {outgoing[2]}  b  ")
    assert head[1].startswith("  event agent_response ") and head[1].endswith("(webhook)")
    assert head[2] == f"  caused by incoming {delivery}"
    assert head[4:] == lines

    as_json = await cli("deliveries", "show", delivery, "--json", "--config", str(path))
    assert as_json.exit_code == 0
    assert json.loads(as_json.output)["caused"] == incoming["caused"]
    out_json = await cli("deliveries", "show", outgoing[0], "--json", "--config", str(path))
    _, api_view = await call(srv, f"/admin/api/outgoing/{outgoing[0]}")
    assert json.loads(out_json.output) == api_view

    missing = await cli("deliveries", "show", "dlv_nothing", "--config", str(path))
    assert missing.exit_code == 1
    assert "Error: no incoming or outgoing delivery 'dlv_nothing'" in missing.output


async def test_a_message_nobody_takes_is_kept_in_its_delivery_and_shown_as_its_event(
    start_server,
) -> None:
    """In an ephemeral session, a ``message_received`` no subscription or plugin takes is no
    row of ``events``: the delivery's row keeps the text, and every view shows the event as
    it would have been published. A lasting session's is stored as before."""
    template = "{{ action }}: {{ title }}"
    target = {"channel": "c", "peer": "p"}
    srv = await start_server(
        {
            "admin": {"enabled": True, "token": TOKEN},
            "handlers": [
                {"id": "quiet", "action": "send_message", "target": target,
                 "template": template, "verify": {"type": "none"}},
                {"id": "kept", "action": "send_message", "target": target,
                 "template": template, "sessionMode": "persistent",
                 "sessionKey": "kept:{{ title }}", "verify": {"type": "none"}},
            ],
        }
    )  # fmt: skip
    store = srv.runtime.store
    _, quiet = await srv.post("quiet", {"action": "opened", "title": "T"})
    _, kept = await srv.post("kept", {"action": "closed", "title": "K"})
    await srv.idle()

    row = await store.get_incoming(quiet["id"])
    assert row is not None and row.message == "opened: T"
    [stored] = await store.list_events(EventQuery(type="message_received"))
    assert stored.causation == kept["id"]  # the lasting session's, stored
    kept_row = await store.get_incoming(kept["id"])
    assert kept_row is not None and kept_row.message is None

    _, incoming = await call(srv, f"/admin/api/incoming/{quiet['id']}")
    caused = incoming["caused"]
    assert [e["type"] for e in caused] == ["session_started", "message_received", "session_ended"]
    received = caused[1]
    assert received["id"] == derived_event_id(quiet["id"], "message_received")
    status, shown = await call(srv, f"/admin/api/events/{received['id']}")
    assert status == 200
    assert shown["payload"] == {
        "id": received["id"],
        "type": "message_received",
        "timestamp": received["timestamp"],
        "session": quiet["session"],
        "message": {
            "from": "webhook:quiet",
            "text": "opened: T",
            "timestamp": received["timestamp"],
        },
        "causation": quiet["id"],
    }
    _, page = await call(srv, f"/admin/api/sessions/{quote(quiet['session'], safe='')}")
    assert [i.get("type") for i in page["items"] if i["kind"] == "event"] == [
        "session_started",
        "message_received",
        "session_ended",
    ]

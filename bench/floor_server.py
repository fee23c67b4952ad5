"""The floor: the least a server can do and still keep the pipeline's promises for the
ingest workloads, so that a ratio can be read against what is reachable on the machine.

It checks the shared secret (constant time), parses the JSON, commits the delivery's row to a
WAL-mode SQLite file before answering 202 (every row asked for in one turn of the event loop
in one transaction, on the loop's own thread), then runs the action in a task of its own:
``noop`` records the outcome; ``send_message`` fills in the two-variable template, commits the
message to a second file (the local gateway's log) and then records the outcome. Nothing else:
no limits, no routing, no dedup, no metrics, no sessions, no plugins, no fallbacks when the
database is busy.

Usage: ``floor_server.py PORT WORKLOAD STATE_DIR`` on the event loop of ``BENCH_LOOP``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from clawdbot_webhooks_hookspecs import new_id
from harness import LOOP

from clawdbot_webhooks.eventloop import loop_factory

SECRET = b"bench-secret"

INBOX = """
CREATE TABLE IF NOT EXISTS inbox (
    id TEXT PRIMARY KEY, hook_id TEXT NOT NULL, received_at REAL NOT NULL,
    content_type TEXT NOT NULL, body BLOB NOT NULL, headers TEXT NOT NULL,
    client_ip TEXT NOT NULL, session TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL NOT NULL DEFAULT 0,
    result TEXT, finished_at REAL
);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (received_at) WHERE status = 'pending';
"""
ADD = (
    "INSERT INTO inbox (id, hook_id, received_at, content_type, body, headers, client_ip, "
    "session, status, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)"
)
FINISH = (
    "UPDATE inbox SET status='done', attempts=1, result=?, lease_until=0, finished_at=? WHERE id=?"
)
LOG = """
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY, at REAL NOT NULL, session TEXT NOT NULL, channel TEXT NOT NULL,
    peer TEXT NOT NULL, text TEXT NOT NULL, idempotency_key TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""
SEND = (
    "INSERT INTO messages (at, session, channel, peer, text, idempotency_key) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


class TurnCommits:
    """Rows asked for in one turn of the loop, committed together at the next."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path, schema: str) -> None:
        self.loop = loop
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(schema)
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.waiting: list[asyncio.Future[None]] = []

    def add(self, sql: str, row: tuple[Any, ...]) -> None:
        if not self.rows:
            self.loop.call_soon(self.commit)
        self.rows.setdefault(sql, []).append(row)

    def wait(self, sql: str, row: tuple[Any, ...]) -> asyncio.Future[None]:
        self.add(sql, row)
        future = self.loop.create_future()
        self.waiting.append(future)
        return future

    def commit(self) -> None:
        rows, waiting = self.rows, self.waiting
        self.rows, self.waiting = {}, []
        self.conn.execute("BEGIN IMMEDIATE")
        for sql, params in rows.items():
            self.conn.executemany(sql, params)
        self.conn.execute("COMMIT")
        for future in waiting:
            future.set_result(None)


def serve(port: int, workload: str, state: Path) -> None:
    # The loop kept (``asyncio.get_running_loop`` costs a system call on Python 3.11) and
    # aiohttp's low-level server without an application or a router: the least aiohttp does.
    loop = loop_factory(LOOP)()
    store = TurnCommits(loop, state / "inbox.db", INBOX)
    log = TurnCommits(loop, state / "log.db", LOG)
    tasks: set[asyncio.Task[None]] = set()

    async def noop(delivery_id: str, payload: Any, session: str) -> None:
        store.add(FINISH, (None, time.time(), delivery_id))

    async def send_message(delivery_id: str, payload: Any, session: str) -> None:
        text = f"{payload['action']}: {payload['pull_request']['title']}"
        await log.wait(SEND, (time.time(), session, "bench", "dev", text, delivery_id))
        store.add(FINISH, ('{"sent": true}', time.time(), delivery_id))

    action = {"noop": noop, "send_message": send_message}[workload]

    async def receive(request: web.BaseRequest) -> web.Response:
        given = request.headers.get("X-Webhook-Secret", "").encode()
        if not hmac.compare_digest(given, SECRET):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.read()
        payload = orjson.loads(body)
        delivery_id, session, now = new_id("dlv"), new_id("ses"), time.time()
        headers = json.dumps(dict(request.headers))
        row = (delivery_id, "x", now, request.content_type, body, headers)
        await store.wait(ADD, (*row, request.remote or "", session, now + 30))
        task = loop.create_task(action(delivery_id, payload, session))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        answer = {"ok": True, "id": delivery_id, "session": session}
        return web.Response(body=orjson.dumps(answer), status=202, content_type="application/json")

    async def main() -> None:
        server = await loop.create_server(web.Server(receive), "127.0.0.1", port)
        await server.serve_forever()

    loop.run_until_complete(main())


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))

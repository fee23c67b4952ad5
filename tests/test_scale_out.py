"""Several server processes sharing one PostgreSQL store: concurrent intake with duplicates,
a process killed with SIGKILL under load, per-session order of outgoing deliveries across
processes, the database going away and coming back, and a clear start-up error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import POSTGRES_URL, free_port, write_config

#: These tests are about sharing a store between processes: PostgreSQL only.
BACKENDS = ["postgres"]
#: Handlers of the serve processes below are public on purpose: the tests post without a secret.
PUBLIC = {"type": "none"}

pytestmark = pytest.mark.slow

HOOKFNS = """
    import asyncio, os, pathlib, sqlite3
    from clawdbot_webhooks_hookspecs import Event

    def _db():
        conn = sqlite3.connect(os.environ["EFFECTS_DB"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, pid INTEGER)")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
        return conn

    async def effect(ctx):
        conn = _db()
        conn.execute("INSERT INTO runs VALUES (?, ?)", (ctx.idempotency_key, os.getpid()))
        gate = os.environ.get("GATE_FILE")
        while gate and not pathlib.Path(gate).exists():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.01)
        # The effect is keyed by the idempotency key, as a real receiver would do it.
        conn.execute("INSERT OR IGNORE INTO effects VALUES (?)", (ctx.idempotency_key,))
        conn.close()
        return "done"

    async def emit(ctx):
        payload = ctx.delivery.payload
        await ctx.publish(
            Event("message_received", {"n": payload["n"]}, session=payload["s"])
        )
        return "emitted"
"""


@pytest.fixture
def effects_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hookfns.py").write_text(textwrap.dedent(HOOKFNS))
    return {"EFFECTS_DB": str(tmp_path / "effects.db")}


def effects(env: dict[str, str]) -> tuple[set[str], dict[str, set[int]], int]:
    """Keys whose effect happened, the processes each key ran in, and the number of runs."""
    conn = sqlite3.connect(env["EFFECTS_DB"], timeout=30)
    try:
        done = {k for (k,) in conn.execute("SELECT key FROM effects")}
        pids: dict[str, set[int]] = defaultdict(set)
        runs = 0
        for key, pid in conn.execute("SELECT key, pid FROM runs"):
            pids[key].add(pid)
            runs += 1
        return done, pids, runs
    finally:
        conn.close()


async def wait_done(server: Any, expected: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = (await asyncio.to_thread(server.store_counts)).get("inbox", {})
        if counts.get("done", 0) >= expected and not counts.get("pending"):
            return counts
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all deliveries finished: {counts}")


async def post(
    client: aiohttp.ClientSession, base: str, hook: str, body: Any, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with client.post(f"{base}/webhook/{hook}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def start_all(*servers: Any) -> None:
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))


async def test_two_processes_share_intake_dedup_and_run_each_action_once(
    server_process, effects_env
) -> None:
    config = {
        "incoming": {"concurrency": 32},
        "handlers": [
            {"id": "fx", "action": "custom", "function": "hookfns:effect", "verify": PUBLIC}
        ],
    }
    a, b = (server_process(config, env=effects_env) for _ in range(2))
    await start_all(a, b)
    async with aiohttp.ClientSession() as client:
        slots = asyncio.Semaphore(32)

        async def one(n: int) -> str:
            async with slots:
                status, body = await post(client, (a, b)[n % 2].base, "fx", {"n": n})
            assert status == 202, body
            return str(body["id"])

        async def duplicate(k: int) -> list[tuple[int, dict[str, Any]]]:
            # The same sender delivery id at both processes at once: one stores it.
            key = {"idempotency-key": f"dup-{k}"}
            return list(
                await asyncio.gather(
                    post(client, a.base, "fx", {"dup": k}, **key),
                    post(client, b.base, "fx", {"dup": k}, **key),
                )
            )

        accepted = await asyncio.gather(*(one(n) for n in range(120)))
        pairs = await asyncio.gather(*(duplicate(k) for k in range(20)))
    for pair in pairs:
        assert sorted(status for status, _ in pair) == [200, 202], pair
        (fresh,) = [body for status, body in pair if status == 202]
        (dup,) = [body for status, body in pair if status == 200]
        assert dup == {"ok": True, "duplicate": True, "id": fresh["id"]}
        accepted.append(fresh["id"])

    counts = await wait_done(a, expected=140)
    assert counts == {"done": 140}
    done, pids, runs = effects(effects_env)
    assert done == set(accepted)
    # No crash, so no takeover: every action ran exactly once, in one of the two processes.
    assert runs == 140
    assert {a.proc.pid, b.proc.pid} == set().union(*pids.values())
    assert a.terminate() == 0 and b.terminate() == 0


async def test_sigkill_under_load_the_survivor_finishes_every_acknowledged_delivery(
    server_process, effects_env, storage, tmp_path
) -> None:
    gate = tmp_path / "gate"
    env = {**effects_env, "GATE_FILE": str(gate)}
    config = {
        "incoming": {"concurrency": 64},
        "handlers": [
            {"id": "fx", "action": "custom", "function": "hookfns:effect", "verify": PUBLIC}
        ],
        # Short, so the takeover comes soon; long enough that a loaded machine's stall does
        # not let one process take the other's live work.
        "storage": {**storage, "leaseSeconds": 3.0},
    }
    doomed, survivor = server_process(config, env=env), server_process(config, env=env)
    await start_all(doomed, survivor)
    async with aiohttp.ClientSession() as client:

        async def one(server: Any, n: int) -> str:
            status, body = await post(client, server.base, "fx", {"n": n})
            assert status == 202, body
            return str(body["id"])

        # Both are busy (their actions wait at the gate) when one of them is killed.
        killed_work = await asyncio.gather(*(one(doomed, n) for n in range(40)))
        own_work = await asyncio.gather(*(one(survivor, n) for n in range(40)))
        await asyncio.sleep(3.5)  # past a lease: the heartbeat kept the doomed one's claims
        assert (await asyncio.to_thread(survivor.store_counts))["inbox"] == {"pending": 80}
        load = asyncio.gather(*(one(survivor, n) for n in range(40, 80)))
        await asyncio.to_thread(doomed.kill)
        gate.touch()
        own_work += await load

    counts = await wait_done(survivor, expected=120)
    assert counts == {"done": 120}
    done, pids, _ = effects(effects_env)
    assert done == set(killed_work) | set(own_work)
    # The killed process had started every one of its deliveries; the survivor ran them again.
    assert all(pids[k] == {doomed.proc.pid, survivor.proc.pid} for k in killed_work)
    assert all(pids[k] == {survivor.proc.pid} for k in own_work)
    assert survivor.terminate() == 0


async def test_outgoing_per_session_order_across_two_processes(
    server_process, effects_env, make_sink
) -> None:
    # Every third request fails, so retries interleave with fresh deliveries. The sink
    # answers its requests in the order they arrive, so request i got ``answers[i]``.
    answers = [200, 503, 200] * 200
    sink = await make_sink(script=list(answers))
    config = {
        "handlers": [
            {
                "id": "emit",
                "action": "custom",
                "function": "hookfns:emit",
                "mode": "sync",
                "verify": PUBLIC,
            }
        ],
        "outgoing": [
            {
                "id": "sink",
                "url": sink.url,
                "events": ["message_received"],
                "concurrency": 8,
                "retry": {"maxAttempts": 50, "initialDelay": 0.02, "maxDelay": 0.1},
            }
        ],
    }
    a, b = (server_process(config, env=effects_env) for _ in range(2))
    await start_all(a, b)
    sessions, per_session = 6, 12

    def delivered() -> dict[str, list[int]]:
        got: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(sink.received):
            if i >= len(answers) or answers[i] == 200:
                body = json.loads(request["body"])
                got[body["session"]].append(body["message"]["n"])
        return got

    async with aiohttp.ClientSession() as client:

        async def session(s: int) -> None:
            # The session's events are made by both processes in turn, one after the other.
            for n in range(per_session):
                server = (a, b)[(n + s) % 2]
                status, body = await post(client, server.base, "emit", {"s": f"s{s}", "n": n})
                assert status == 200, body

        await asyncio.gather(*(session(s) for s in range(sessions)))
    deadline = time.monotonic() + 30
    while sum(map(len, delivered().values())) < sessions * per_session:
        assert time.monotonic() < deadline, delivered()
        await asyncio.sleep(0.1)

    arrivals: dict[str, list[int]] = defaultdict(list)
    for request in sink.received:
        body = json.loads(request["body"])
        arrivals[body["session"]].append(body["message"]["n"])
    assert set(arrivals) == {f"s{s}" for s in range(sessions)}
    for name, ns in arrivals.items():
        # Retries repeat an event, but nothing later ever goes before an earlier one.
        assert ns == sorted(ns), (name, ns)
    assert delivered() == {f"s{s}": list(range(per_session)) for s in range(sessions)}
    assert a.terminate() == 0 and b.terminate() == 0


class Proxy:
    """A TCP proxy in front of PostgreSQL that can be cut and restored, so a test can take
    the database away from one server without stopping the machine's PostgreSQL."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        parts = urlsplit(POSTGRES_URL)
        user = f"{parts.username}@" if parts.username else ""
        return f"postgresql://{user}127.0.0.1:{self.port}{parts.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._link, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.difference_update((writer, up_writer))


async def test_database_away_then_back_503_then_accepting_without_restart(
    start_server, storage
) -> None:
    parts = urlsplit(POSTGRES_URL)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    srv = await start_server(
        {
            "handlers": [
                {"id": "agent", "action": "run_agent", "agentId": "main", "template": "{{ n }}"}
            ],
            "storage": {**storage, "url": proxy.url},
        }
    )
    status, _ = await srv.post("agent", {"n": 1})
    assert status == 202
    await srv.idle()

    await proxy.cut()
    status, body = await srv.post("agent", {"n": 2})
    assert status == 503 and body["ok"] is False
    async with srv.session.get(f"{srv.base}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["checks"]["store"].startswith("unavailable")

    await proxy.start()  # the database is back, on the same address
    deadline = time.monotonic() + 20
    while True:
        status, body = await srv.post("agent", {"n": 3})
        if status == 202:
            break
        assert status == 503 and time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.2)
    await srv.idle()
    async with srv.session.get(f"{srv.base}/readyz") as resp:
        assert resp.status == 200
    replies = [m["text"] for m in srv.messages() if m["kind"] == "reply"]
    assert replies == ["[main #1] 1", "[main #1] 3"]  # the refused one was never half-accepted
    await proxy.cut()
    await proxy.start()  # let the server's shutdown reach the database


def test_unreachable_database_at_start_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "config.json5",
        {
            "stateDir": str(tmp_path / "state"),
            "storage": {"url": f"postgresql://cw:s3cret-pw@127.0.0.1:{port}/nowhere"},
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "clawdbot_webhooks", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "s3cret-pw" not in output
    assert "Traceback" not in output
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert f"postgresql://cw:***@127.0.0.1:{port}/nowhere" in line
    assert "refused" in line.lower() or "connect" in line.lower()

"""Acknowledged deliveries survive kill -9 and graceful shutdown; effects happen once."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GATED = """
    import asyncio, os, pathlib, sqlite3

    def _db():
        conn = sqlite3.connect(os.environ["EFFECTS_DB"], timeout=30, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, pid INTEGER)")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
        return conn

    async def gated(ctx):
        conn = _db()
        conn.execute("INSERT INTO runs VALUES (?, ?)", (ctx.idempotency_key, os.getpid()))
        gate = pathlib.Path(os.environ["GATE_FILE"])
        while not gate.exists():
            await asyncio.sleep(0.02)
        # The effect is keyed by the idempotency key, as a real receiver would do it.
        conn.execute("INSERT OR IGNORE INTO effects VALUES (?)", (ctx.idempotency_key,))
        conn.close()
        return "done"
"""


def post(base: str, hook: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/webhook/{hook}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return json.loads(response.read())


def wait_all_done(server: Any, expected: int, timeout: float = 60) -> dict[str, int]:
    """Poll the server's store (either backend) until ``expected`` deliveries are done."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = server.store_counts().get("inbox", {})
        if counts.get("done", 0) == expected:
            return counts
        time.sleep(0.1)
    raise AssertionError(f"not all deliveries finished: {counts}")


@pytest.fixture
def gated_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hookfns.py").write_text(textwrap.dedent(GATED))
    return {"EFFECTS_DB": str(tmp_path / "effects.db"), "GATE_FILE": str(tmp_path / "gate")}


PUBLIC = {"type": "none"}
CONFIG = {
    "incoming": {"concurrency": 8},
    "handlers": [
        {"id": "slow", "action": "custom", "function": "hookfns:gated", "verify": PUBLIC},
        {
            "id": "agent",
            "action": "run_agent",
            "agentId": "main",
            "template": "n={{ n }}",
            "verify": PUBLIC,
        },
    ],
}


#: ``serve --loop`` and the loop its start-up line must name: auto is uvloop here (a
#: dependency wherever the suite runs), and asyncio's own loop must keep working too.
LOOPS = pytest.mark.parametrize("loop, named", [("auto", "uvloop"), ("asyncio", "asyncio")])


def assert_runs_on(server: Any, named: str) -> None:
    assert f"event loop: {named})" in server.log.read_text()


@LOOPS
def test_kill_9_after_acknowledging_then_restart(
    server_process, gated_env, tmp_path, loop, named
) -> None:
    server = server_process(CONFIG, env=gated_env, loop=loop)
    server.start()
    assert_runs_on(server, named)
    # Bodies of each size the store writes its own way: in the row, apart from it on the
    # loop's connection, and apart from it in the writer thread.
    pads = ("", "x" * 5000, "x" * 20000)
    slow = [post(server.base, "slow", {"n": n, "pad": pads[n % 3]})["id"] for n in range(40)]
    agent = [post(server.base, "agent", {"n": n})["id"] for n in range(60)]
    server.kill()  # some actions are blocked at the gate, some agent runs are mid-way

    Path(gated_env["GATE_FILE"]).touch()
    server.start()
    state = tmp_path / "state"
    counts = wait_all_done(server, expected=100)
    assert counts == {"done": 100}
    server.terminate()

    effects = sqlite3.connect(gated_env["EFFECTS_DB"])
    assert sorted(k for (k,) in effects.execute("SELECT key FROM effects")) == sorted(slow)
    runs = effects.execute("SELECT key, COUNT(DISTINCT pid) FROM runs GROUP BY key").fetchall()
    # The blocked actions really did run twice, once per process: at-least-once delivery,
    # made exactly-once in effect by the idempotency key.
    assert sorted(k for k, _ in runs) == sorted(slow)
    assert max(pids for _, pids in runs) == 2
    log = sqlite3.connect(state / "local-gateway.sqlite3")
    prompts = log.execute(
        "SELECT idempotency_key, COUNT(*) FROM messages WHERE kind='prompt' GROUP BY 1"
    ).fetchall()
    assert sorted(k for k, _ in prompts) == sorted(agent)
    assert {n for _, n in prompts} == {1}


@LOOPS
def test_sigterm_drains_in_flight_work_and_leaves_the_rest(
    server_process, gated_env, tmp_path, loop, named
) -> None:
    config = {**CONFIG, "incoming": {"concurrency": 2, "shutdownTimeout": 0.5}}
    server = server_process(config, env=gated_env, loop=loop)
    server.start()
    assert_runs_on(server, named)
    ids = [post(server.base, "slow", {"n": n})["id"] for n in range(6)]
    started = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - started < 10
    Path(gated_env["GATE_FILE"]).touch()
    server.start()
    wait_all_done(server, expected=6)
    server.terminate()
    effects = sqlite3.connect(gated_env["EFFECTS_DB"])
    assert sorted(k for (k,) in effects.execute("SELECT key FROM effects")) == sorted(ids)

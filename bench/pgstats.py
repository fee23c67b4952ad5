"""What a PostgreSQL server spent on a benchmark's database: the CPU time of its processes
(from /proc, so the server must run on this machine), WAL bytes, transactions and rows, and
what its connections were waiting for while the load ran.

The benchmark gets a database of its own (``scratch_database``) so that the server's
per-database counters and the backends serving it can be told apart from those of anyone
else using the same server; what other databases' backends spent meanwhile is reported too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import pinned

_TICK = os.sysconf("SC_CLK_TCK")
#: pg_stat_database counters reported per unit of work.
_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A database made for the run and dropped afterwards (its connections with it)."""
    name = f"cw_capacity_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_cpu() -> dict[int, tuple[float, int, float]]:
    """CPU seconds (user + system), parent pid, and CPU seconds of reaped children of every
    ``postgres`` process: the postmaster reaps every backend, so what a backend spent reaches
    its figures when the backend exits."""
    found: dict[int, tuple[float, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        own = (int(fields[11]) + int(fields[12])) / _TICK
        found[int(entry.name)] = (own, int(fields[1]), (int(fields[13]) + int(fields[14])) / _TICK)
    return found


class Watch:
    """Samples the server every ``interval`` seconds from a process of its own (pinned with
    the load generator, so that it takes no time from what is measured), between ``start()``
    and ``stop()``: every postgres process's CPU time, which database and kind of backend each
    is, and the connections to ``database`` with their state, wait events and ungranted
    locks. ``finish()`` adds the per-database counters and returns the totals."""

    def __init__(self, admin_url: str, database: str, interval: float = 0.25) -> None:
        self.admin_url, self.database = admin_url, database
        self._proc = subprocess.Popen(
            pinned([sys.executable, __file__, admin_url, database, str(interval)], 1),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the watch did not start")
        self._raw: dict[str, Any] = {}

    def stop(self) -> None:
        """The end of the measured window: a last sample, CPU and WAL. ``finish`` reads the
        per-database counters later, once the backends have reported them."""
        out, _ = self._proc.communicate("stop\n", timeout=30)
        self._raw = json.loads(out)

    def finish(self) -> dict[str, Any]:
        raw = self._raw
        after = asyncio.run(_counters(self.admin_url, self.database))
        first = {int(k): v for k, v in raw["first"].items()}
        last = {int(k): v for k, v in raw["last"].items()}
        kind = {int(k): v for k, v in raw["kind"].items()}
        cpu = collections.Counter[str]()
        gone = 0.0
        for pid, spent in last.items():
            cpu[kind.get(pid, "unclassified")] += spent - first.get(pid, 0.0)
            if pid not in raw["alive"]:
                gone += spent - first.get(pid, 0.0)
        # Reaped during the window: the part after their last sample, and processes never
        # sampled (short-lived ones, anyone's).
        cpu["exited unsampled"] = max(raw["reaped"] - gone, 0.0)
        before = raw["before"]
        delta = {k: after[k] - before[k] for k in after}
        delta["wal"] = raw["wal"] - before["wal"]
        connections, active = raw["connections"], raw["active"]
        return {
            "cpu_s": dict(cpu),
            **{k: delta[k] for k in (*_COUNTERS, "wal", "other_xact")},
            "samples": len(connections),
            "connections_max": max(connections, default=0),
            "connections_mean": sum(connections) / max(len(connections), 1),
            "active_mean": sum(active) / max(len(active), 1),
            "waits": dict(collections.Counter(raw["waits"]).most_common(8)),
            "lock_waits": dict(collections.Counter(raw["locks"]).most_common(8)),
        }


async def _counters(admin_url: str, database: str) -> dict[str, float]:
    conn = await asyncpg.connect(admin_url)
    try:
        row = await conn.fetchrow(
            "SELECT "
            + ", ".join(f"sum({c}) FILTER (WHERE datname=$1) AS {c}" for c in _COUNTERS)
            + ", sum(xact_commit) FILTER (WHERE datname IS DISTINCT FROM $1) AS other_xact, "
            "(SELECT pg_current_wal_lsn() - '0/0'::pg_lsn) AS wal FROM pg_stat_database",
            database,
        )
    finally:
        await conn.close()
    return {k: float(v or 0) for k, v in dict(row).items()}


class _Sampler:
    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url, self.database = admin_url, database
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.alive: set[int] = set()
        self.connections: list[int] = []
        self.active: list[int] = []
        self.waits: collections.Counter[str] = collections.Counter()
        self.locks: collections.Counter[str] = collections.Counter()
        self.reaped = 0.0

    async def run(self, interval: float) -> dict[str, Any]:
        before = await _counters(self.admin_url, self.database)
        conn = await asyncpg.connect(self.admin_url)
        procs = postgres_cpu()
        self.first = {pid: own for pid, (own, _, _) in procs.items()}
        reaped_before = _reaped(procs)
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, sys.stdin.readline)
        print("ready", flush=True)
        try:
            while not stop.done():
                await self.sample(conn)
                await asyncio.wait([stop], timeout=interval)
            await self.sample(conn)
        finally:
            await conn.close()
        procs = postgres_cpu()
        self.reaped = _reaped(procs) - reaped_before
        wal = await _counters(self.admin_url, self.database)
        return {
            "before": before,
            "wal": wal["wal"],
            "first": self.first,
            "last": self.last,
            "kind": self.kind,
            "alive": sorted(self.alive),
            "reaped": self.reaped,
            "connections": self.connections,
            "active": self.active,
            "waits": dict(self.waits),
            "locks": dict(self.locks),
        }

    async def sample(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(
            "SELECT pid, datname, backend_type, state, wait_event_type, wait_event "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        )
        locks = await conn.fetch(
            "SELECT l.locktype, l.mode, count(*) AS n FROM pg_locks l "
            "JOIN pg_database d ON d.oid=l.database WHERE d.datname=$1 AND NOT l.granted "
            "GROUP BY 1, 2",
            self.database,
        )
        procs = postgres_cpu()
        self.alive = set(procs)
        for pid, (own, parent, _) in procs.items():
            self.last[pid] = own
            if parent not in procs:
                self.kind[pid] = "background"  # the postmaster: forks every connection
        connections = active = 0
        for r in rows:
            if r["backend_type"] != "client backend":
                # Background work is shared; an autovacuum worker is ours or another's.
                ours = r["datname"] in (None, self.database)
                self.kind[r["pid"]] = "background" if ours else "other"
                continue
            if r["datname"] != self.database:
                self.kind[r["pid"]] = "other"
                continue
            self.kind[r["pid"]] = "backends"
            connections += 1
            if r["state"] == "active":
                active += 1
                self.waits[f"{r['wait_event_type'] or 'CPU'}:{r['wait_event'] or '-'}"] += 1
            elif r["state"] == "idle in transaction":
                self.waits["idle in transaction"] += 1
        self.connections.append(connections)
        self.active.append(active)
        for lock in locks:
            self.locks[f"{lock['locktype']}:{lock['mode']}"] += int(lock["n"])


def _reaped(procs: dict[int, tuple[float, int, float]]) -> float:
    return sum(children for _, parent, children in procs.values() if parent not in procs)


def per_unit(watch: dict[str, Any], units: float) -> dict[str, float]:
    """The database's cost of one unit of work (a webhook or a delivery)."""
    cpu = watch["cpu_s"]
    units = max(units, 1.0)
    return {
        "db_cpu_us": 1e6 * (cpu.get("backends", 0.0) + cpu.get("background", 0.0)) / units,
        "db_backends_us": 1e6 * cpu.get("backends", 0.0) / units,
        "db_background_us": 1e6 * cpu.get("background", 0.0) / units,
        # other databases' backends, the sampler, processes that came and went unsampled
        "others_cpu_s": cpu.get("other", 0.0)
        + cpu.get("unclassified", 0.0)
        + cpu.get("exited unsampled", 0.0),
        "others_xacts": watch["other_xact"],
        "wal_bytes": watch["wal"] / units,
        "xacts": (watch["xact_commit"] + watch["xact_rollback"]) / units,
        "rows_written": (watch["tup_inserted"] + watch["tup_updated"] + watch["tup_deleted"])
        / units,
    }


def wait_briefly() -> None:
    """Backends report their counters at most once a second while busy."""
    time.sleep(1.5)


if __name__ == "__main__":
    sampled = asyncio.run(_Sampler(sys.argv[1], sys.argv[2]).run(float(sys.argv[3])))
    print(json.dumps(sampled))

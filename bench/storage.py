"""Storage backends side by side: ingest (wrk against ``serve``: shared-secret auth, durable
store, 202, a no-op action) and durable outgoing delivery throughput (events published on
the bus, stored, dispatched in per-session order, every attempt recorded), once on SQLite and
once on PostgreSQL, one table.

PostgreSQL: ``$CW_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
the run uses a schema of its own and drops it afterwards. Usage:
    .venv/bin/python bench/storage.py [--seconds 10] [--connections 32] [--events 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import Server, free_port, run_async, save, table, webhooks_server, wrk  # noqa: E402
from ingest import BODY  # noqa: E402
from outgoing import SINK, durable  # noqa: E402

POSTGRES_URL = os.environ.get("CW_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def ingest(storage: dict[str, Any], seconds: int, connections: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        webhooks = {
            "incoming": {"secret": "bench-secret", "concurrency": 64},
            "handlers": [{"id": "x", "action": "custom", "function": "noop:noop"}],
            "storage": storage,
        }
        with webhooks_server(webhooks, Path(tmp), port, core=0):
            return wrk(
                f"http://127.0.0.1:{port}/webhook/x",
                BODY,
                {"X-Webhook-Secret": "bench-secret"},
                connections=connections,
                seconds=seconds,
            )


def outgoing(storage: dict[str, Any], events: int, concurrency: int, sessions: int) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "sink.py"
        sink.write_text(SINK)
        with Server([sys.executable, str(sink), str(port)], port, core=1):
            url = f"http://127.0.0.1:{port}/in"
            return run_async(durable(url, events, concurrency, sessions, Path(tmp), storage))


def storage_for(backend: str, schemas: list[str]) -> dict[str, Any]:
    """The storage section for one measurement; a fresh PostgreSQL schema is noted in
    ``schemas`` so it can be dropped afterwards."""
    if backend == "sqlite":
        return {}
    schemas.append(f"cw_bench_{uuid.uuid4().hex[:8]}")
    return {"url": POSTGRES_URL, "schema": schemas[-1]}


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be measured here, or None when it can."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed: .venv/bin/pip install -e '.[postgres]'"

    async def reach() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await conn.close()

    try:
        run_async(reach())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"no PostgreSQL at {POSTGRES_URL} ({exc}); set CW_BENCH_POSTGRES_URL"
    return None


def drop_schema(schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    run_async(drop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    backends = ["sqlite"]
    missing = postgres_missing()
    if missing:
        print(f"== postgresql: not measured: {missing}", flush=True)
    else:
        backends.append("postgresql")
    for backend in backends:
        schemas: list[str] = []
        try:
            print(f"== {backend}: ingest", flush=True)
            got = ingest(storage_for(backend, schemas), args.seconds, args.connections)
            print(f"== {backend}: outgoing", flush=True)
            rate = outgoing(
                storage_for(backend, schemas), args.events, args.concurrency, args.sessions
            )
        finally:
            for schema in schemas:
                drop_schema(schema)
        rows.append(
            {
                "backend": backend,
                "ingest_rps": got["rps"],
                "ingest_p50_ms": got.get("p50_ms"),
                "ingest_p99_ms": got.get("p99_ms"),
                "non2xx": got.get("non2xx", 0),
                "outgoing_per_s": rate,
            }
        )
    print(
        table(
            rows,
            ["backend", "ingest_rps", "ingest_p50_ms", "ingest_p99_ms", "non2xx", "outgoing_per_s"],
        )
    )
    save("storage", rows)


if __name__ == "__main__":
    main()

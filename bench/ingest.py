"""Ingest: the full pipeline (shared-secret auth, durable SQLite store, 202, a no-op action)
against a bare aiohttp handler that only parses the JSON, same load generator, same run.

Targets: ratio >= 0.5, p99 <= 20 ms (32 connections)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import Server, free_port, save, table, webhooks_server, wrk

BODY = json.dumps(
    {
        "action": "opened",
        "repository": {"name": "claw"},
        "pull_request": {"title": "Make it fast", "number": 42},
        "pad": "x" * 600,
    }
)


def run(seconds: int, connections: int) -> dict[str, Any]:
    port = free_port()
    with Server(
        [sys.executable, str(Path(__file__).parent / "baseline_server.py"), str(port)], port, core=0
    ) as _:
        baseline = wrk(
            f"http://127.0.0.1:{port}/webhook/x", BODY, {}, connections=connections, seconds=seconds
        )
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        webhooks = {
            "incoming": {"secret": "bench-secret", "concurrency": 64},
            "handlers": [{"id": "x", "action": "custom", "function": "noop:noop"}],
        }
        with webhooks_server(webhooks, Path(tmp), port, core=0):
            full = wrk(
                f"http://127.0.0.1:{port}/webhook/x",
                BODY,
                {"X-Webhook-Secret": "bench-secret"},
                connections=connections,
                seconds=seconds,
            )
    return {"baseline": baseline, "pipeline": full, "ratio": full["rps"] / baseline["rps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    result = run(args.seconds, args.connections)
    rows = [
        {"server": name, **{k: v for k, v in result[name].items()}}
        for name in ("baseline", "pipeline")
    ]
    print(table(rows, ["server", "rps", "p50_ms", "p90_ms", "p99_ms", "non2xx", "requests"]))
    print(
        f"ratio pipeline/baseline: {result['ratio']:.2f} (target >= 0.5); "
        f"pipeline p99 {result['pipeline'].get('p99_ms', 0):.1f} ms (target <= 20)"
    )
    save("ingest", result)


if __name__ == "__main__":
    main()

"""Scaling: throughput with payloads of 1 KB, 64 KB and 1 MB (each against the bare aiohttp
handler with the same body), and with 1, 100 and 10,000 handlers and subscriptions (route and
subscription lookup must not grow with their number)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, free_port, save, table, webhooks_server, wrk

SECRET = {"X-Webhook-Secret": "bench-secret"}


def body_of(size: int) -> str:
    base = {"action": "opened", "repository": {"name": "claw"}, "pad": ""}
    return json.dumps({**base, "pad": "x" * (size - len(json.dumps(base)))})


def payloads(seconds: int) -> list[dict[str, Any]]:
    rows = []
    for label, size in (("1 KB", 1024), ("64 KB", 64 * 1024), ("1 MB", 1024 * 1024)):
        body = body_of(size)
        port = free_port()
        baseline_cmd = [
            sys.executable,
            str(Path(__file__).parent / "baseline_server.py"),
            str(port),
        ]
        with Server(baseline_cmd, port, core=0):
            base = wrk(f"http://127.0.0.1:{port}/webhook/x", body, {}, seconds=seconds)
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            webhooks = {
                "incoming": {"secret": "bench-secret", "maxBodyBytes": 2 * 1024 * 1024},
                "handlers": [{"id": "x", "action": "custom", "function": "noop:noop"}],
            }
            with webhooks_server(webhooks, Path(tmp), port, core=0):
                full = wrk(f"http://127.0.0.1:{port}/webhook/x", body, SECRET, seconds=seconds)
        rows.append(
            {
                "case": f"payload {label}",
                "rps": full["rps"],
                "baseline_rps": base["rps"],
                "ratio": full["rps"] / base["rps"],
                "p99_ms": full.get("p99_ms", 0.0),
            }
        )
    return rows


def counts(seconds: int) -> list[dict[str, Any]]:
    rows = []
    for n in (1, 100, 10_000):
        handlers = [{"id": f"h{i}", "action": "custom", "function": "noop:noop"} for i in range(n)]
        # Subscriptions to `error` only: each delivery's session events are looked up against
        # all of them, and none fires, so only the lookup is measured.
        outgoing = [
            {"id": f"s{i}", "url": "http://127.0.0.1:9/never", "events": ["error"]}
            for i in range(n)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            webhooks = {
                "incoming": {"secret": "bench-secret"},
                "handlers": handlers,
                "outgoing": outgoing,
            }
            with webhooks_server(webhooks, Path(tmp), port, core=0):
                result = wrk(
                    f"http://127.0.0.1:{port}/webhook/h{n - 1}",
                    body_of(1024),
                    SECRET,
                    seconds=seconds,
                )
        rows.append(
            {
                "case": f"{n} handlers + {n} subscriptions",
                "rps": result["rps"],
                "p99_ms": result.get("p99_ms", 0.0),
            }
        )
    first = rows[0]["rps"]
    for row in rows:
        row["ratio"] = row["rps"] / first
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    rows = payloads(args.seconds) + counts(args.seconds)
    print(table(rows, ["case", "rps", "baseline_rps", "ratio", "p99_ms"]))
    save("scaling", rows)


if __name__ == "__main__":
    main()

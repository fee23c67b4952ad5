"""Memory: the server's RSS after 200,000 webhooks stays within 10% of its RSS after 20,000
(nothing grows per delivery: sessions, waiters, leases, caches)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, pin_self, rss_kib, run_async, save, table, webhooks_server

BODY = json.dumps({"action": "opened", "repository": {"name": "claw"}, "pad": "x" * 400})


async def send(base: str, count: int, concurrency: int) -> None:
    left = count
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": "bench-secret"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with client.post(f"{base}/webhook/x", data=BODY, headers=headers) as r:
                    await r.read()
                    if r.status != 202:
                        raise RuntimeError(f"status {r.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run(first: int, total: int) -> dict[str, Any]:
    pin_self(1)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        webhooks = {
            "incoming": {"secret": "bench-secret"},
            "handlers": [{"id": "x", "action": "custom", "function": "noop:noop"}],
        }
        with webhooks_server(webhooks, Path(tmp), port, core=0) as server:
            base = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            run_async(send(base, first, 32))
            time.sleep(2)  # let the actions of the last requests finish
            at_first = rss_kib(server.proc.pid)
            run_async(send(base, total - first, 32))
            time.sleep(2)
            at_total = rss_kib(server.proc.pid)
            elapsed = time.perf_counter() - started
    return {
        f"rss_after_{first}_kib": at_first,
        f"rss_after_{total}_kib": at_total,
        "growth": at_total / at_first - 1,
        "webhooks_per_s": total / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--first", type=int, default=20_000)
    parser.add_argument("--total", type=int, default=200_000)
    args = parser.parse_args()
    result = run(args.first, args.total)
    print(table([result], list(result)))
    print(f"growth {result['growth']:+.1%} (target within 10%)")
    save("memory", result)


if __name__ == "__main__":
    main()

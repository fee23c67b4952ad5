"""End-to-end latency: webhook → run_agent on the local echo agent → agent_response POSTed by
the outbox → received by a local sink. p50 and p99 at light and at heavy load.

The server runs in its own process on core 0; the load generator and the sink share this
process on core 1, and the sink reads the send time back out of the echoed prompt."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SECRET_HEADER, free_port, pin_self, run_async, save, table, webhooks_server

SENT = re.compile(r"sent=([\d.]+)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    base: str, sink_port: int, total: int, concurrency: int, rate: float | None
) -> dict[str, Any]:
    latencies: list[float] = []
    done = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        if payload.get("type") == "agent_response":
            match = SENT.search(payload["response"]["text"])
            if match:
                latencies.append((time.time() - float(match[1])) * 1000)
                if len(latencies) >= total:
                    done.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/in", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    left = total
    async with aiohttp.ClientSession() as client:

        async def sender() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                body = {"text": f"sent={time.time():.6f}"}
                async with client.post(
                    f"{base}/webhook/ask", json=body, headers=SECRET_HEADER
                ) as resp:
                    assert resp.status == 202, await resp.text()
                if rate:
                    await asyncio.sleep(concurrency / rate)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        await asyncio.wait_for(done.wait(), timeout=120)
        elapsed = time.perf_counter() - started
    await runner.cleanup()
    return {
        "deliveries": total,
        "per_s": total / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


def run(light: int, heavy: int) -> dict[str, Any]:
    pin_self(1)
    results: dict[str, Any] = {}
    for name, total, concurrency, rate in (("light", light, 1, 20.0), ("heavy", heavy, 32, None)):
        sink_port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            webhooks = {
                "incoming": {"secret": "bench-secret"},
                "handlers": [
                    {
                        "id": "ask",
                        "action": "run_agent",
                        "agentId": "bench",
                        "template": "{{ text }}",
                    }
                ],
                "outgoing": [
                    {
                        "id": "sink",
                        "url": f"http://127.0.0.1:{sink_port}/in",
                        "events": ["agent_response"],
                    }
                ],
            }
            port = free_port()
            with webhooks_server(webhooks, Path(tmp), port, core=0):
                results[name] = run_async(
                    measure(f"http://127.0.0.1:{port}", sink_port, total, concurrency, rate)
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--light", type=int, default=200, help="deliveries at 20/s")
    parser.add_argument("--heavy", type=int, default=3000, help="deliveries, 32 senders")
    args = parser.parse_args()
    results = run(args.light, args.heavy)
    rows = [{"load": k, **v} for k, v in results.items()]
    print(table(rows, ["load", "deliveries", "per_s", "p50_ms", "p99_ms", "max_ms"]))
    save("e2e", results)


if __name__ == "__main__":
    main()

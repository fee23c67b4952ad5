"""Sustained durable outgoing delivery throughput against a local sink.

Two measurements in one run, against the same sink process:
- baseline: a bare aiohttp client POST loop (same concurrency), no storage at all;
- durable: events published on the runtime's bus (each stored in the outbox before publish
  returns), dispatched in per-session order, every attempt and outcome committed to SQLite.

The sink runs in its own process on the other core; the two alternate for ``--rounds`` pairs
and the medians are reported. Usage:
    .venv/bin/python bench/outgoing.py [--events 20000] [--concurrency 64] [--sessions 2000]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import Server, abba, free_port, run_async, save  # noqa: E402

SINK = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/in", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def baseline(url: str, total: int, concurrency: int) -> float:
    body = json.dumps({"id": "evt_x", "type": "message_received", "data": {"n": 1}}).encode()
    left = total

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=64)
    ) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with client.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def durable(
    url: str,
    total: int,
    concurrency: int,
    sessions: int,
    workdir: Path,
    storage: dict[str, Any] | None = None,
    done: Callable[[], None] | None = None,
) -> float:
    from clawdbot_webhooks_hookspecs import Event

    from clawdbot_webhooks.config import build_settings
    from clawdbot_webhooks.plugins import PluginSelection, load_plugins
    from clawdbot_webhooks.runtime import Runtime
    from clawdbot_webhooks.web.app import tune_collector

    raw: dict[str, Any] = {
        "stateDir": str(workdir / "state"),
        "storage": storage or {},
        "outgoing": [
            {
                "id": "bench",
                "url": url,
                "events": ["*"],
                "concurrency": concurrency,
                "secret": "whsec_" + "QmVuY2htYXJrU2VjcmV0S2V5MTIzNDU2Nzg5MA==",
            }
        ],
    }
    plugins = load_plugins(PluginSelection.from_config())
    runtime = Runtime(build_settings(raw, plugins, None), plugins)
    await runtime.start()
    tune_collector()  # as ``serve`` does once started
    try:
        publishers = 64
        started = time.perf_counter()

        async def publish(k: int) -> None:
            # Each event made as it is published, as the gateway's and the bridge's are: a
            # list of them all made beforehand would be the collector's to walk, not ours.
            for i in range(k, total, publishers):
                await runtime.bus.publish(
                    Event("message_received", {"n": i, "text": "hello"}, session=f"s{i % sessions}")
                )

        await asyncio.gather(*(publish(k) for k in range(publishers)))
        published = time.perf_counter() - started
        # Watched in memory (the metrics' tally of attempts): counting the outbox in the store
        # would scan it on the writer's thread, taking time from the deliveries measured.
        delivered = runtime.metrics.outgoing.values
        while delivered.get(("bench", "delivered"), 0) < total:
            await asyncio.sleep(0.01)
        # Then the store, once, to be sure: a delivery counts once its outcome is committed.
        while (await runtime.store.schema_status()).counts["outbox"].get("done", 0) < total:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        if done is not None:  # before the runtime stops
            done()
        print(f"  published {total} in {published:.2f}s ({total / published:,.0f}/s)")
        return total / elapsed
    finally:
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000, help="per durable run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="baseline/durable pairs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    port = free_port()
    bases: list[float] = []
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        sink_file = Path(tmp) / "sink.py"
        sink_file.write_text(SINK)
        with Server([sys.executable, str(sink_file), str(port)], port, core=1):
            url = f"http://127.0.0.1:{port}/in"
            # Alternating, as ingest does: both see the same drift of a shared machine.
            for i, kind in abba(["baseline", "durable"], args.rounds):
                if kind == "baseline":
                    bases.append(run_async(baseline(url, args.events, args.concurrency)))
                    print(f"baseline aiohttp POST loop: {bases[-1]:,.0f} req/s")
                    continue
                workdir = Path(tmp) / f"round{i}"
                rates.append(
                    run_async(durable(url, args.events, args.concurrency, args.sessions, workdir))
                )
                print(f"durable outgoing deliveries: {rates[-1]:,.0f}/s")
    each = [rate / base for rate, base in zip(rates, bases, strict=True)]
    rate, base = statistics.median(rates), statistics.median(bases)
    print(f"median: {rate:,.0f}/s durable, {base:,.0f} req/s bare ({statistics.median(each):.0%})")
    save(
        "outgoing",
        {
            "events": args.events,
            "concurrency": args.concurrency,
            "sessions": args.sessions,
            "baseline_rps": round(base),
            "durable_per_s": round(rate),
            "ratio": round(statistics.median(each), 3),
            "durable_runs": [round(r) for r in rates],
            "baseline_runs": [round(b) for b in bases],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


if __name__ == "__main__":
    main()

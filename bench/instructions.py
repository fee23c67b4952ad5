"""Instructions per request, counted by valgrind's callgrind: unlike requests per second, the
same on a quiet machine and a busy one, so a change of a few percent can be seen.

Each server (the bare aiohttp baseline, the full pipeline of ``ingest.py``) runs under
callgrind twice, taking N and then 2N requests from 32 concurrent clients; the difference of
the two totals divided by N is the cost of one request, start-up and shutdown cancelling out.
User-space instructions only: system calls and waiting are not in it. Slow (about a minute and
a half per server); not part of ``run.py``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import BENCH, LOOP, free_port, run_async, save, wait_port
from ingest import BODY, WORKLOADS


async def _load(port: int, n: int, secret: bool) -> None:
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Webhook-Secret"] = "bench-secret"
    requests = iter(range(n))
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            for _ in requests:
                async with session.post(
                    f"http://127.0.0.1:{port}/webhook/x", data=BODY, headers=headers
                ) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"answered {resp.status}")
                    await resp.read()

        await asyncio.gather(*(client() for _ in range(32)))


def _total(command: list[str], n: int, secret: bool, port: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{n}"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
        env={**os.environ, "PYTHONPATH": str(BENCH)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc, timeout=120)
    run_async(_load(port, 50, secret))  # warm up: first requests import and cache
    run_async(_load(port, n, secret))
    time.sleep(1)
    proc.terminate()
    proc.wait(120)
    found = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.M)
    if found is None:
        raise RuntimeError("no totals in the callgrind output")
    return int(found[1])


def per_request(name: str, n: int, workload: str = "noop") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        totals = []
        for count in (n, 2 * n):
            port = free_port()
            if name == "baseline":
                command = [sys.executable, str(BENCH / "baseline_server.py"), str(port)]
            else:
                state = workdir / f"state-{count}"
                config = workdir / f"config-{count}.json"
                config.write_text(
                    json.dumps(
                        {
                            "webhooks": {
                                "stateDir": str(state),
                                "incoming": {"secret": "bench-secret", "concurrency": 64},
                                "handlers": [WORKLOADS[workload]],
                            }
                        }
                    )
                )
                command = [
                    *(sys.executable, "-m", "clawdbot_webhooks", "serve"),
                    *("--config", str(config), "--port", str(port), "--log-level", "warning"),
                    *("--loop", LOOP),
                ]
            totals.append(_total(command, count, name == "pipeline", port, workdir))
        return (totals[1] - totals[0]) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="N")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="noop", help="as ingest.py")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    result: dict[str, Any] = {
        name: per_request(name, args.requests, args.workload) for name in ("baseline", "pipeline")
    }
    result["ratio"] = result["baseline"] / result["pipeline"]
    print(f"baseline  {result['baseline']:,.0f} instructions/request")
    print(f"pipeline  {result['pipeline']:,.0f} instructions/request")
    print(f"ratio baseline/pipeline: {result['ratio']:.2f} (ingest ratio, in instructions)")
    save("instructions", result)


if __name__ == "__main__":
    main()

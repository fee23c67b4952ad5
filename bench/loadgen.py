"""A closed-loop HTTP load generator on aiohttp, for machines without wrk.

``--connections`` clients each send their next POST as soon as the last one is answered, for
``--seconds``; one JSON object goes to stdout, shaped like ``harness.wrk``'s result. It is
slower than wrk (on uvloop it drove the bare baseline at 15,500 req/s where wrk drove it at
17,500), so against the fastest servers it sets the pace: its figures are lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import run_async


async def load(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    non2xx = 0
    connector = aiohttp.TCPConnector(limit=connections)
    headers = {"Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            nonlocal non2xx
            while (sent := time.perf_counter()) < deadline:
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    non2xx += not 200 <= resp.status < 400
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    result: dict[str, Any] = {"rps": len(latencies) / elapsed}
    for pct in (50, 75, 90, 99):
        at = min(len(latencies) - 1, len(latencies) * pct // 100)
        result[f"p{pct}_ms"] = 1000 * latencies[at] if latencies else 0.0
    result["non2xx"] = float(non2xx)
    result["requests"] = float(len(latencies))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--headers", default="{}", help="JSON object of extra headers")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    result = run_async(
        load(
            args.url,
            args.body_file.read_bytes(),
            json.loads(args.headers),
            args.connections,
            args.seconds,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

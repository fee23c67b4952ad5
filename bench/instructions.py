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
from harness import BENCH, LOOP, baseline_command, free_port, run_async, save, table, wait_port
from ingest import BODY, WORKLOADS, webhooks


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


def _callgrind(command: list[str], n: int, secret: bool, port: int, workdir: Path) -> Path:
    """Run ``command`` under callgrind while it takes ``n`` requests; its output file."""
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
    return out


def _total(out: Path) -> int:
    found = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.M)
    if found is None:
        raise RuntimeError("no totals in the callgrind output")
    return int(found[1])


#: A line of ``callgrind_annotate``: instructions, share, ``file:function`` and, when the
#: function was not inlined from a header, ``[library]``.
_ANNOTATED = re.compile(r"^\s*([\d,]+) \([\s\d.]+%\)\s+(.*?)(?:\s+\[(.+)\])?\s*$")


def _by_library(out: Path) -> dict[str, int]:
    """Instructions by the library that ran them: the interpreter, SQLite, the C library, each
    C extension. Code inlined from a header is named by its source (CPython's or glibc's)."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        found = _ANNOTATED.match(line)
        if found is None or "PROGRAM TOTALS" in line:
            continue
        source, library = found[2], found[3]
        if library is None:
            library = "libpython" if "Python-" in source or "Include/" in source else "libc"
        # ``libpython3.11.so.1.0`` and ``libsqlite3.so.0.8.6`` as ``libpython``, ``libsqlite``
        name = Path(library).name.split(".")[0].rstrip("0123456789")
        counts[name] = counts.get(name, 0) + int(found[1].replace(",", ""))
    return counts


def per_request(
    name: str, n: int, workload: str = "noop", *, libraries: bool = False
) -> tuple[float, dict[str, float]]:
    """Instructions per request of ``name`` ("baseline" or "pipeline"), and with
    ``libraries`` those by library (``_by_library``)."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        outs = []
        for count in (n, 2 * n):
            port = free_port()
            if name == "baseline":
                command = baseline_command(port)
            else:
                state = workdir / f"state-{count}"
                config = workdir / f"config-{count}.json"
                config.write_text(
                    json.dumps({"webhooks": {"stateDir": str(state), **webhooks(workload)}})
                )
                command = [
                    *(sys.executable, "-m", "clawdbot_webhooks", "serve"),
                    *("--config", str(config), "--port", str(port), "--log-level", "warning"),
                    *("--loop", LOOP),
                ]
            outs.append(_callgrind(command, count, name == "pipeline", port, workdir))
        total = (_total(outs[1]) - _total(outs[0])) / n
        if not libraries:
            return total, {}
        first, second = _by_library(outs[0]), _by_library(outs[1])
        split = {lib: (second.get(lib, 0) - first.get(lib, 0)) / n for lib in first | second}
        return total, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="N")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="noop", help="as ingest.py")
    parser.add_argument(
        "--by-library",
        action="store_true",
        help="also split each figure by the library that ran it (callgrind_annotate)",
    )
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    result: dict[str, Any] = {}
    split: dict[str, dict[str, float]] = {}
    for name in ("baseline", "pipeline"):
        result[name], split[name] = per_request(
            name, args.requests, args.workload, libraries=args.by_library
        )
    result["ratio"] = result["baseline"] / result["pipeline"]
    print(f"baseline  {result['baseline']:,.0f} instructions/request")
    print(f"pipeline  {result['pipeline']:,.0f} instructions/request")
    print(f"ratio baseline/pipeline: {result['ratio']:.2f} (ingest ratio, in instructions)")
    if args.by_library:
        result["by_library"] = split
        libraries = sorted(
            split["pipeline"] | split["baseline"], key=lambda k: -split["pipeline"].get(k, 0)
        )
        rows = [
            {
                "library": lib,
                "baseline": split["baseline"].get(lib, 0.0),
                "pipeline": split["pipeline"].get(lib, 0.0),
            }
            for lib in libraries
            if max(abs(split["baseline"].get(lib, 0.0)), abs(split["pipeline"].get(lib, 0.0)))
            >= 500
        ]
        print(table(rows, ["library", "baseline", "pipeline"]))
    save("instructions", result)


if __name__ == "__main__":
    main()

"""Where a webhook's CPU time goes, by part of the stack: the kernel, SQLite, aiohttp, asyncio,
each package of ours. Linux ``perf`` samples the bare aiohttp baseline, the floor
(``floor_server.py``) and the pipeline while wrk loads each in turn, in the same run.

Unlike ``instructions.py`` this counts time, system calls included, and names the Python code
that ran: Python 3.12's perf support puts each Python function into the native stack. A
sample's time goes to the innermost Python function on its stack (its C calls included),
except that time in SQLite's library, in the kernel and in the event loop's C code is counted
apart. Sampling slows the server down, so each server's CPU time per request is measured in a
run of its own first and split as the samples are.

Needs ``perf`` (Debian's ``linux-perf``), wrk and a Python >= 3.12 with the package installed:

    python3.12 -m venv .venv-perf && .venv-perf/bin/pip install -e ./hookspecs -e .
    .venv-perf/bin/python bench/where.py --workload send_message
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    SECRET_HEADER,
    Server,
    baseline_command,
    cpu_seconds,
    floor_command,
    free_port,
    save,
    table,
    webhooks_server,
    wrk,
)
from ingest import BODY, WORKLOADS, webhooks

#: Samples per second.
FREQUENCY = 999
#: A native frame of a Python function (``-X perf``): ``py::name:/path/file.py``.
_PYTHON = re.compile(r"^py::.*?:(/.*)$")
_FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)(?:\+0x[0-9a-f]+)?\s+\((.*)\)$")


def component(path: str) -> str:
    """The part of the stack a Python file belongs to."""
    if "/clawdbot_webhooks_hookspecs/" in path:
        return "ours: hookspecs"
    if "/clawdbot_webhooks/" in path:
        inner = path.split("/clawdbot_webhooks/", 1)[1]
        return "ours: " + (inner.split("/", 1)[0] if "/" in inner else inner.removesuffix(".py"))
    for name in ("aiohttp", "multidict", "yarl", "jinja2", "asyncio", "sqlite3", "pluggy"):
        if f"/{name}/" in path:
            return "aiohttp" if name in ("multidict", "yarl") else name
    if path.startswith(str(BENCH)):
        return "the benchmark's own handler"
    return "Python's standard library, other"


def classify(stack: list[tuple[str, str]]) -> str:
    """A sample's part: its stack innermost first, as (symbol, library) pairs."""
    library = stack[0][1]
    if library == "[kernel.kallsyms]":
        if any("libsqlite3" in lib for _, lib in stack):
            return "kernel, for SQLite (its files)"
        return "kernel, other (sockets, polling)"
    if "libsqlite3" in library:
        return "SQLite"
    for symbol, library in stack:
        # The loop's own C code (uvloop, asyncio's tasks), however deep the Python that runs
        # the loop: else its time would go to whatever started the loop.
        if library.startswith(("loop.cpython", "_asyncio.cpython")):
            return "the event loop's C code (uvloop, asyncio's tasks)"
        found = _PYTHON.match(symbol)
        if found:
            return component(found[1])
    return "interpreter, outside any Python function"


def innermost(stack: list[tuple[str, str]]) -> str:
    """The innermost Python function of a stack, as ``function (file)``."""
    for symbol, _ in stack:
        found = _PYTHON.match(symbol)
        if found:
            name = symbol[4:].split(":", 1)[0]
            return f"{name} ({Path(found[1]).name})"
    return "?"


def samples(data: Path) -> Iterator[list[tuple[str, str]]]:
    """Each sample's stack from ``perf script``."""
    script = subprocess.Popen(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert script.stdout is not None
    stack: list[tuple[str, str]] = []
    for line in script.stdout:
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        found = _FRAME.match(line)
        if found and line[0].isspace():
            stack.append((found[1], Path(found[2]).name or found[2]))
    if stack:
        yield stack
    script.wait()


def profile(server: Server, url: str, headers: dict[str, str], seconds: int, out: Path) -> Any:
    """The server's CPU time per request, in microseconds, split by part: measured while wrk
    loads it for ``seconds``, then split as the samples of a second such run are."""
    wrk(url, BODY, headers, seconds=1)  # warm up
    before = cpu_seconds(server.proc.pid)
    run = wrk(url, BODY, headers, seconds=seconds)
    run["cpu_us"] = 1e6 * (cpu_seconds(server.proc.pid) - before) / max(run["requests"], 1.0)
    record = subprocess.Popen(
        [
            *("perf", "record", "-e", "cpu-clock", "-F", str(FREQUENCY)),
            *("--call-graph", "dwarf,16384", "-p", str(server.proc.pid), "-o", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wrk(url, BODY, headers, seconds=seconds)
    finally:
        record.send_signal(signal.SIGINT)
        record.wait(120)
    parts: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for stack in samples(out):
        part = classify(stack)
        parts[part] += 1
        if part.startswith("ours: "):
            functions[innermost(stack)] += 1
    scale = run["cpu_us"] / max(sum(parts.values()), 1)
    run["functions"] = {name: n * scale for name, n in functions.most_common()}
    return {part: n * scale for part, n in parts.items()}, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=list(WORKLOADS), default="send_message")
    parser.add_argument("--seconds", type=int, default=10, help="sampled per server")
    parser.add_argument(
        "--functions", type=int, default=25, help="how many of our functions to list"
    )
    args = parser.parse_args()
    if sys.version_info < (3, 12):
        raise SystemExit("needs Python 3.12 or newer for perf's view of Python (see --help)")
    if not shutil.which("perf") or not shutil.which("wrk"):
        raise SystemExit("needs perf and wrk (apt-get install linux-perf wrk)")
    os.environ["PYTHONPERFSUPPORT"] = "1"  # every server started from here
    url = "http://127.0.0.1:{}/webhook/x"
    split: dict[str, dict[str, float]] = {}
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        ports = {name: free_port() for name in ("baseline", "floor", "pipeline")}
        floor = floor_command(ports["floor"], args.workload, tmp)
        pipeline = webhooks_server(webhooks(args.workload), work, ports["pipeline"])
        servers = {
            "baseline": (Server(baseline_command(ports["baseline"]), ports["baseline"]), {}),
            "floor": (Server(floor, ports["floor"]), SECRET_HEADER),
            "pipeline": (pipeline, SECRET_HEADER),
        }
        for server, _ in servers.values():
            stack.enter_context(server)
        for name, (server, headers) in servers.items():
            print(f"sampling {name} for {args.seconds}s", flush=True)
            split[name], runs[name] = profile(
                server, url.format(ports[name]), headers, args.seconds, work / f"{name}.data"
            )
    parts = sorted(set().union(*split.values()), key=lambda p: -split["pipeline"].get(p, 0.0))
    rows = [{"part": p, **{name: split[name].get(p, 0.0) for name in split}} for p in parts]
    rows.append({"part": "total", **{name: sum(split[name].values()) for name in split}})
    print(f"CPU time per request by part, microseconds ({args.workload}):")
    print(table(rows, ["part", "baseline", "floor", "pipeline"]))
    print("Our functions, in the pipeline (time inside each, its C calls included):")
    top = list(runs["pipeline"]["functions"].items())[: args.functions]
    print(table([{"function": f, "us": us} for f, us in top], ["function", "us"]))
    save(f"where-{args.workload}", {"split": split, "runs": runs})


if __name__ == "__main__":
    main()

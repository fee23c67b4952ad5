"""Shared benchmark plumbing: processes pinned to cores, wrk runs, result tables."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from clawdbot_webhooks.eventloop import loop_factory

T = TypeVar("T")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CORES = os.cpu_count() or 1
#: The event loop of every server, baseline and in-process benchmark (``run.py --loop``):
#: the same for both sides of a ratio, so a ratio measures our code, not the loop.
LOOP = os.environ.get("BENCH_LOOP", "auto")
#: How the benchmarks' webhooks servers authenticate (``incoming.secret: bench-secret``).
SECRET_HEADER = {"X-Webhook-Secret": "bench-secret"}


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the benchmarks' event loop."""
    with asyncio.Runner(loop_factory=loop_factory(LOOP)) as runner:
        return runner.run(main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(command: Sequence[str], core: int | None) -> list[str]:
    """Pin to one core when there are at least two and taskset exists, so the server and the
    load generator do not fight over the same core; ``None`` leaves it to the scheduler."""
    if core is not None and CORES >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core % CORES), *command]
    return list(command)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


class Server:
    def __init__(
        self,
        command: Sequence[str],
        port: int,
        env: dict[str, str] | None = None,
        core: int | None = 0,
    ) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            pinned(command, core),
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_port(port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def baseline_command(port: int) -> list[str]:
    """The bare aiohttp handler every ratio is taken against (``baseline_server.py``)."""
    return [sys.executable, str(BENCH / "baseline_server.py"), str(port)]


def floor_command(port: int, workload: str, state_dir: str | Path) -> list[str]:
    """The floor for an ingest workload (``floor_server.py``), keeping its files in
    ``state_dir``."""
    return [sys.executable, str(BENCH / "floor_server.py"), str(port), workload, str(state_dir)]


def webhooks_server(
    webhooks: dict[str, Any], workdir: Path, port: int, core: int | None = 0
) -> Server:
    config = workdir / "config.json"
    config.write_text(json.dumps({"webhooks": {"stateDir": str(workdir / "state"), **webhooks}}))
    env = {"PYTHONPATH": str(BENCH)}
    return Server(
        [
            sys.executable,
            "-m",
            "clawdbot_webhooks",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--loop",
            LOOP,
        ],
        port,
        env,
        core,
    )


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str,
    body: str,
    headers: dict[str, str],
    *,
    connections: int = 32,
    seconds: int = 10,
    core: int = 1,
    delay_ms: float = 0,
) -> dict[str, float]:
    """Run wrk against ``url``; requests/s and latency percentiles in milliseconds. Without
    wrk, ``loadgen.py`` (aiohttp) stands in, and its figures are bounded by its own speed.
    ``delay_ms`` paces each connection: that long between an answer and its next request."""
    if not shutil.which("wrk"):
        return _aiohttp_load(url, body, headers, connections, seconds, core)
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    if delay_ms:
        lines += f"\nfunction delay() return {round(delay_ms)} end"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT.format(body=json.dumps(body), headers=lines))
    out = subprocess.run(
        pinned(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            core,
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    result: dict[str, float] = {"rps": float(rps[1])}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            result[f"p{pct}_ms"] = float(m[1]) * _UNITS[m[2]]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = float(non2xx[1]) if non2xx else 0.0
    requests = re.search(r"(\d+) requests in", out)
    result["requests"] = float(requests[1]) if requests else 0.0
    return result


class Target(NamedTuple):
    """A running server and the request wrk sends it."""

    server: Server
    url: str
    body: str
    headers: dict[str, str]


def _aiohttp_load(
    url: str, body: str, headers: dict[str, str], connections: int, seconds: int, core: int
) -> dict[str, float]:
    _say_no_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        file.write(body)
        file.flush()
        command = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            url,
            "--body-file",
            file.name,
            "--headers",
            json.dumps(headers),
            f"--connections={connections}",
            f"--seconds={seconds}",
        ]
        out = subprocess.run(pinned(command, core), capture_output=True, text=True, check=True)
    return {k: float(v) for k, v in json.loads(out.stdout).items()}


@functools.cache
def _say_no_wrk() -> None:  # once per run
    print("  wrk is not installed (apt-get install wrk): load from bench/loadgen.py instead")


def alternate(
    targets: dict[str, Target], *, rounds: int, seconds: int, connections: int = 32
) -> dict[str, list[dict[str, float]]]:
    """wrk against every target in turn, ``rounds`` times, the order reversed every other
    round (ABBA): on a shared machine the speed available drifts by tens of percent within a
    minute, and alternating short runs lets every target see the same drift. Each run also
    records the server's CPU time per request (``cpu_us``, which other tenants of the machine
    move less than req/s) and the share of the host's CPU stolen meanwhile (``steal``)."""
    for target in targets.values():  # warm up: imports, caches, first pages
        wrk(target.url, target.body, target.headers, connections=connections, seconds=1)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for _, name in abba(list(targets), rounds):
        target = targets[name]
        before, host = cpu_seconds(target.server.proc.pid), host_cpu()
        run = wrk(target.url, target.body, target.headers, connections=connections, seconds=seconds)
        spent = cpu_seconds(target.server.proc.pid) - before
        run["cpu_us"] = 1e6 * spent / max(run["requests"], 1.0)
        run["steal"] = stolen(host, host_cpu())
        runs[name].append(run)
    return runs


def abba(names: list[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, name) in the order ``alternate`` runs them: every other round reversed."""
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            yield i, name


def against_baseline(
    webhooks: dict[str, Any],
    body: str,
    *,
    rounds: int,
    seconds: int,
    connections: int = 32,
    floor: str | None = None,
) -> dict[str, list[dict[str, float]]]:
    """The bare aiohttp handler and the full pipeline (``webhooks``, shared secret, handler
    ``x``), both up at once on core 0, measured with ``alternate``: runs by "baseline" and
    "pipeline". With ``floor`` (a workload of ``floor_server.py``), that server as well, by
    "floor"."""
    base_port, full_port = free_port(), free_port()
    url = "http://127.0.0.1:{}/webhook/x"
    with (
        tempfile.TemporaryDirectory() as tmp,
        Server(baseline_command(base_port), base_port, core=0) as base_server,
        webhooks_server(webhooks, Path(tmp), full_port, core=0) as full_server,
        contextlib.ExitStack() as more,
    ):
        targets = {
            "baseline": Target(base_server, url.format(base_port), body, {}),
            "pipeline": Target(full_server, url.format(full_port), body, SECRET_HEADER),
        }
        if floor is not None:
            floor_port = free_port()
            floor_cmd = floor_command(floor_port, floor, tmp)
            floor_server = more.enter_context(Server(floor_cmd, floor_port, core=0))
            targets["floor"] = Target(floor_server, url.format(floor_port), body, SECRET_HEADER)
        return alternate(targets, rounds=rounds, seconds=seconds, connections=connections)


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def ratios(runs: list[dict[str, float]], against: list[dict[str, float]]) -> list[float]:
    """Each round's req/s against the same round's run of the other target."""
    return [r["rps"] / a["rps"] for r, a in zip(runs, against, strict=True)]


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def save(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def pin_self(core: int) -> None:
    """Pin this process (the load generator) to one core when there are two or more."""
    if hasattr(os, "sched_setaffinity") and CORES >= 2:
        os.sched_setaffinity(0, {core % CORES})


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """What the figures were measured on: the processor's model, how many CPUs, the Python,
    the kernel (the docs quote figures by machine)."""
    model = "unknown processor"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{model}, {os.cpu_count()} CPUs, {python}, Linux {platform.release()}"


def host_cpu() -> list[int]:
    """The whole machine's CPU time so far, in clock ticks, as ``/proc/stat`` splits it: user,
    nice, system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as stat:
        return [int(ticks) for ticks in stat.readline().split()[1:9]]


def stolen(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time between two ``host_cpu`` readings that the
    hypervisor gave to other guests ("steal"). A quiet host shows about 0; at 25 % every
    figure of the run is slower than this machine can be, the absolute ones (p99) above all."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return spent[7] / max(sum(spent), 1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")

"""Run every benchmark and print each figure beside its target.

    .venv/bin/python bench/run.py [--quick]

Each benchmark is its own script (run alone for details) and writes bench/results/<name>.json;
this collects them into bench/results/summary.json, one table, and bench/results/summary.png
when matplotlib is installed. Benchmarks are not tests: the suite never runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import RESULTS, host_cpu, machine, save, stolen, table  # noqa: E402

from clawdbot_webhooks.eventloop import CHOICES, chosen_name  # noqa: E402

#: name -> (arguments for a full run, arguments for --quick)
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "ingest": (["--seconds", "5", "--rounds", "4"], ["--seconds", "3", "--rounds", "2"]),
    "e2e": (["--light", "200", "--heavy", "3000"], ["--light", "60", "--heavy", "800"]),
    "outgoing": (["--events", "20000"], ["--events", "6000"]),
    "memory": (["--first", "20000", "--total", "200000"], ["--first", "5000", "--total", "50000"]),
    "scaling": (["--seconds", "5", "--rounds", "3"], ["--seconds", "3", "--rounds", "2"]),
    "storage": (["--seconds", "8", "--events", "10000"], ["--seconds", "4", "--events", "4000"]),
    "capacity": (["--seconds", "5", "--rounds", "3"], ["--seconds", "3", "--rounds", "2"]),
}
#: Run only when named with --only (they take several minutes).
OPTIONAL = {"capacity"}


def _load(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: float, target: str, ok: bool | None, unit: str = "") -> None:
        verdict = "-" if ok is None else ("yes" if ok else "NO")
        rows.append(
            {
                "figure": figure,
                "value": f"{value:,.2f}{unit}" if value < 100 else f"{value:,.0f}{unit}",
                "target": target,
                "met": verdict,
            }
        )

    def section(name: str, fill: Callable[[Any], None]) -> None:
        try:
            fill(_load(name))
        except FileNotFoundError:
            rows.append({"figure": f"{name}: not run", "value": "", "target": "", "met": ""})

    def ingest(results: dict[str, Any]) -> None:
        for workload, r in results.items():
            name = f"ingest ({workload})"
            add(f"{name} req/s, pipeline (SQLite)", r["pipeline"]["rps"], "", None)
            add(f"{name} req/s, bare aiohttp baseline", r["baseline"]["rps"], "", None)
            add(f"{name} ratio pipeline/baseline", r["ratio"], ">= 0.6", r["ratio"] >= 0.6)
            add(f"{name} CPU time per request, baseline/pipeline", r["cpu_ratio"], "", None)
            if "floor_ratio" in r:  # the same durable work and nothing else (floor_server.py)
                add(f"{name} ratio floor/baseline", r["floor_ratio"], "", None)
            add(
                f"{name} p99 (32 connections)",
                r["pipeline"]["p99_ms"],
                "<= 20 ms",
                r["pipeline"]["p99_ms"] <= 20,
                " ms",
            )
            add(f"{name} p99 of the baseline, same runs", r["baseline"]["p99_ms"], "", None, " ms")
            # Absolute figures (req/s, p99) fall with it; the ratios much less.
            add(
                f"{name}: host CPU stolen by other guests",
                100 * r.get("steal", 0.0),
                "",
                None,
                " %",
            )

    section("ingest", ingest)
    section(
        "e2e",
        lambda r: [
            (
                add(f"e2e {load} p50", r[load]["p50_ms"], "", None, " ms"),
                add(f"e2e {load} p99", r[load]["p99_ms"], "", None, " ms"),
                add(f"e2e {load} deliveries/s", r[load]["per_s"], "", None),
            )
            for load in ("light", "heavy")
        ],
    )
    section(
        "outgoing",
        lambda r: (
            add(
                "outgoing durable deliveries/s",
                r["durable_per_s"],
                ">= 2,000",
                r["durable_per_s"] >= 2000,
            ),
            add("outgoing ratio to bare POST loop", r["ratio"], "", None),
        ),
    )
    section(
        "memory",
        lambda r: add(
            "RSS growth 20k -> 200k webhooks",
            r["growth"] * 100,
            "<= 10 %",
            r["growth"] <= 0.10,
            " %",
        ),
    )
    section(
        "scaling",
        lambda rs: [
            add(
                f"scaling {row['case']} (x of 1-handler rate)"
                if "handlers" in row["case"]
                else f"scaling {row['case']} ratio to baseline",
                row["ratio"],
                ">= 0.8 (not linear)" if "handlers" in row["case"] else "",
                row["ratio"] >= 0.8 if "handlers" in row["case"] else None,
            )
            for row in rs
        ],
    )
    section(
        "storage",
        lambda rs: [
            (
                add(f"{row['backend']} ingest req/s", row["ingest_rps"], "", None),
                add(f"{row['backend']} outgoing deliveries/s", row["outgoing_per_s"], "", None),
            )
            for row in rs
        ],
    )
    if (RESULTS / "capacity.json").exists():
        section(
            "capacity",
            lambda r: [
                add(f"PostgreSQL CPU per {unit}", r["model"][f"db_us_per_{unit}"], "", None, " µs")
                for unit in ("webhook", "delivery")
                if "model" in r
            ],
        )
    return rows


def _plot(rows: list[dict[str, Any]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    try:
        ingest, outgoing = _load("ingest"), _load("outgoing")
    except FileNotFoundError:
        return None
    labels, values, colors = [], [], []
    for workload, r in ingest.items():
        labels += [f"{workload}\nbaseline", f"{workload}\npipeline"]
        values += [r["baseline"]["rps"], r["pipeline"]["rps"]]
        colors += ["#999", "#2a7"]
    labels += ["outgoing\nbare loop", "outgoing\ndurable"]
    values += [outgoing["baseline_rps"], outgoing["durable_per_s"]]
    colors += ["#999", "#27a"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(labels, values, color=colors)
    ax.axhline(2000, color="#c33", linestyle="--", linewidth=1, label="outgoing target 2,000/s")
    ax.set_ylabel("per second")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = RESULTS / "summary.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these")
    parser.add_argument(
        "--loop",
        choices=CHOICES,
        default="auto",
        help="event loop of the servers and of both sides of every ratio (default: as serve)",
    )
    args = parser.parse_args()
    os.environ["BENCH_LOOP"] = args.loop
    measured_on = machine()
    print(f"machine: {measured_on}\nevent loop: {chosen_name(args.loop)}", flush=True)
    for name, (full, quick) in RUNS.items():
        if (name not in args.only) if args.only else (name in OPTIONAL):
            continue
        started, host = time.monotonic(), host_cpu()
        print(f"== {name}", flush=True)
        done = subprocess.run(
            [sys.executable, str(BENCH / f"{name}.py"), *(quick if args.quick else full)]
        )
        status = "ok" if done.returncode == 0 else f"failed ({done.returncode})"
        print(
            f"   {name}: {status} in {time.monotonic() - started:.0f}s, "
            f"host CPU stolen by other guests {stolen(host, host_cpu()):.0%}",
            flush=True,
        )
    rows = _rows()
    # With --only, the other rows are an earlier run's, whatever machine that was.
    print(f"\nthis run on: {measured_on}")
    print(table(rows, ["figure", "value", "target", "met"]))
    save("summary", {"machine": measured_on, "figures": rows})
    plot = _plot(rows)
    if plot:
        print(f"\nplot: {plot}")


if __name__ == "__main__":
    main()

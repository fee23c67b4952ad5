"""Ingest: the full pipeline (shared-secret auth, durable SQLite store, 202, then the action)
against a bare aiohttp handler that only parses the JSON, same load generator, same run.

Two workloads: ``noop`` (a custom action that does nothing: the cost of receiving and
storing) and ``send_message`` (the built-in action rendering a two-variable template to the
local gateway: what a typical handler costs). Each is reported with its CPU-time ratio, which
moves less with the machine than req/s. ``floor_server.py`` runs beside them: the same
durable work with nothing else around it: what these promises alone leave room for on the
machine.

Targets: ratio >= 0.6 (aim 0.7), p99 <= 20 ms (32 connections). Medians of alternating
rounds."""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from harness import against_baseline, median_run, ratios, save, table

BODY = json.dumps(
    {
        "action": "opened",
        "repository": {"name": "claw"},
        "pull_request": {"title": "Make it fast", "number": 42},
        "pad": "x" * 600,
    }
)


WORKLOADS: dict[str, dict[str, Any]] = {
    "noop": {"id": "x", "action": "custom", "function": "noop:noop"},
    "send_message": {
        "id": "x",
        "action": "send_message",
        "target": {"channel": "bench", "peer": "dev"},
        "template": "{{ action }}: {{ pull_request.title }}",
    },
}


def webhooks(workload: str) -> dict[str, Any]:
    """The ``webhooks`` config of the pipeline for ``workload`` (without ``stateDir``)."""
    return {
        "incoming": {"secret": "bench-secret", "concurrency": 64},
        "handlers": [WORKLOADS[workload]],
    }


def run(seconds: int, connections: int, rounds: int, workload: str = "noop") -> dict[str, Any]:
    """Both servers stay up (pinned to the same core) while wrk alternates between them
    (``harness.alternate``); the figures are the medians over the rounds, and each round's
    pair gives one ratio."""
    runs = against_baseline(
        webhooks(workload),
        BODY,
        rounds=rounds,
        seconds=seconds,
        connections=connections,
        floor=workload,
    )
    baseline, pipeline = median_run(runs["baseline"]), median_run(runs["pipeline"])
    floor = median_run(runs["floor"])
    each = ratios(runs["pipeline"], runs["baseline"])
    return {
        "baseline": baseline,
        "pipeline": pipeline,
        "floor": floor,
        "ratio": statistics.median(each),
        "ratios": each,
        "floor_ratio": statistics.median(ratios(runs["floor"], runs["baseline"])),
        "cpu_ratio": baseline["cpu_us"] / pipeline["cpu_us"],
        "floor_cpu_ratio": baseline["cpu_us"] / floor["cpu_us"],
        "steal": statistics.median(r["steal"] for r in runs["baseline"] + runs["pipeline"]),
        "rounds": runs,
    }


def report(workload: str, result: dict[str, Any]) -> None:
    rows = [
        {"server": name, **{k: v for k, v in result[name].items()}}
        for name in ("baseline", "floor", "pipeline")
    ]
    columns = ["server", "rps", "cpu_us", "p50_ms", "p90_ms", "p99_ms", "non2xx", "requests"]
    print(f"-- workload: {workload}")
    print(table(rows, columns))
    print("ratio per round: " + ", ".join(f"{r:.2f}" for r in result["ratios"]))
    # The p99 moves with the machine's other tenants more than anything else measured here.
    rounds = result["rounds"]["pipeline"]
    each = ", ".join(f"{r['p99_ms']:.1f} ms ({r['steal']:.0%})" for r in rounds)
    print(f"pipeline p99 per round (host CPU stolen): {each}")
    print(f"CPU time per request, baseline/pipeline: {result['cpu_ratio']:.2f}")
    print(
        f"floor (floor_server.py: the same durable work and nothing else)/baseline: "
        f"{result['floor_ratio']:.2f}, CPU time per request {result['floor_cpu_ratio']:.2f}"
    )
    print(f"host CPU stolen by other guests during the runs: {result['steal']:.0%} (quiet: ~0%)")
    print(
        f"median ratio pipeline/baseline: {result['ratio']:.2f} (target >= 0.6); "
        f"pipeline p99 {result['pipeline'].get('p99_ms', 0):.1f} ms (target <= 20)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="baseline/pipeline pairs")
    parser.add_argument("--workload", nargs="*", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args()
    results = {}
    for workload in args.workload:
        results[workload] = run(args.seconds, args.connections, args.rounds, workload)
        report(workload, results[workload])
    save("ingest", results)


if __name__ == "__main__":
    main()

"""Scaling: throughput with payloads of 1 KB, 64 KB and 1 MB (each against the bare aiohttp
handler with the same body), and with 1, 100 and 10,000 handlers and subscriptions (route and
subscription lookup must not grow with their number)."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    SECRET_HEADER,
    Target,
    against_baseline,
    alternate,
    free_port,
    median_run,
    ratios,
    save,
    table,
    webhooks_server,
)


def body_of(size: int) -> str:
    base = {"action": "opened", "repository": {"name": "claw"}, "pad": ""}
    return json.dumps({**base, "pad": "x" * (size - len(json.dumps(base)))})


def payloads(seconds: int, rounds: int) -> list[dict[str, Any]]:
    rows = []
    webhooks = {
        "incoming": {"secret": "bench-secret", "maxBodyBytes": 2 * 1024 * 1024},
        "handlers": [{"id": "x", "action": "custom", "function": "noop:noop"}],
    }
    for label, size in (("1 KB", 1024), ("64 KB", 64 * 1024), ("1 MB", 1024 * 1024)):
        runs = against_baseline(webhooks, body_of(size), rounds=rounds, seconds=seconds)
        full, base = median_run(runs["pipeline"]), median_run(runs["baseline"])
        rows.append(
            {
                "case": f"payload {label}",
                "rps": full["rps"],
                "baseline_rps": base["rps"],
                "ratio": statistics.median(ratios(runs["pipeline"], runs["baseline"])),
                "p99_ms": full.get("p99_ms", 0.0),
            }
        )
    return rows


def counts(seconds: int, rounds: int) -> list[dict[str, Any]]:
    """The three servers are up at once and measured in alternating rounds; each count's
    figure is the median of its rounds' req/s against the same round's 1-handler server."""
    cases = (1, 100, 10_000)
    with contextlib.ExitStack() as stack:
        targets = {}
        for n in cases:
            handlers = [
                {"id": f"h{i}", "action": "custom", "function": "noop:noop"} for i in range(n)
            ]
            # Subscriptions to `error` only: each delivery's session events are looked up
            # against all of them, and none fires, so only the lookup is measured.
            outgoing = [
                {"id": f"s{i}", "url": "http://127.0.0.1:9/never", "events": ["error"]}
                for i in range(n)
            ]
            webhooks = {
                "incoming": {"secret": "bench-secret"},
                "handlers": handlers,
                "outgoing": outgoing,
            }
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            port = free_port()
            server = stack.enter_context(webhooks_server(webhooks, Path(tmp), port, core=0))
            url = f"http://127.0.0.1:{port}/webhook/h{n - 1}"
            targets[n] = Target(server, url, body_of(1024), SECRET_HEADER)
        runs = alternate(
            {str(n): target for n, target in targets.items()}, rounds=rounds, seconds=seconds
        )
    first = runs[str(cases[0])]
    return [
        {
            "case": f"{n} handlers + {n} subscriptions",
            "rps": median_run(runs[str(n)])["rps"],
            "p99_ms": median_run(runs[str(n)]).get("p99_ms", 0.0),
            "ratio": statistics.median(ratios(runs[str(n)], first)),
        }
        for n in cases
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    args = parser.parse_args()
    rows = payloads(args.seconds, args.rounds) + counts(args.seconds, args.rounds)
    print(table(rows, ["case", "rps", "baseline_rps", "ratio", "p99_ms"]))
    save("scaling", rows)


if __name__ == "__main__":
    main()

"""Capacity of scale-out on PostgreSQL: what one gateway process does per second on it, what
each webhook and each outgoing delivery costs the database (CPU time of the server's
processes, WAL bytes, transactions, rows), and the same with 1, 2 and 4 ``serve`` processes
sharing one schema (wrk spreading the load over their ports), with the connections they hold
and what those wait for.

The PostgreSQL server must run on this machine (its processes' CPU time is read from /proc);
``$CW_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) must be
allowed to create a database: the run makes one of its own and drops it afterwards. Usage:
    .venv/bin/python bench/capacity.py [--seconds 5] [--rounds 3] [--events 5000]
        [--processes 1 2 4] [--skip-single] [--skip-scale]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import (  # noqa: E402
    CORES,
    RESULTS,
    SECRET_HEADER,
    Server,
    abba,
    baseline_command,
    cpu_seconds,
    free_port,
    host_cpu,
    run_async,
    save,
    stolen,
    table,
    webhooks_server,
    wrk,
)
from ingest import BODY  # noqa: E402
from outgoing import SINK, baseline, durable  # noqa: E402
from pgstats import Watch, per_unit, scratch_database, wait_briefly, with_database  # noqa: E402
from storage import POSTGRES_URL, postgres_missing  # noqa: E402

NOOP = {"id": "x", "action": "custom", "function": "noop:noop"}


def busy(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time spent running anything (stolen time excluded)."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return (sum(spent) - spent[3] - spent[4] - spent[7]) / max(sum(spent), 1)


def webhooks_config(storage: dict[str, Any], sink: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "incoming": {"secret": "bench-secret", "concurrency": 64},
        "handlers": [NOOP],
        "storage": storage,
    }
    if sink:  # every webhook's ephemeral session starts with an event: one delivery each
        config["outgoing"] = [{"id": "out", "url": sink, "events": ["session_started"]}]
    return config


def single_ingest(db_url: str, database: str, seconds: int, rounds: int) -> dict[str, Any]:
    """One process each: the bare aiohttp handler, ``serve`` on SQLite and ``serve`` on
    PostgreSQL, all up at once on core 0, wrk on core 1 alternating between them."""
    names = ["baseline", "sqlite", "postgresql"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    ports = {name: free_port() for name in names}
    storages = {"sqlite": {}, "postgresql": {"url": db_url, "schema": "single"}}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = {
            "baseline": stack.enter_context(
                Server(baseline_command(ports["baseline"]), ports["baseline"], core=0)
            )
        }
        for name in ("sqlite", "postgresql"):
            (tmp / name).mkdir()
            servers[name] = stack.enter_context(
                webhooks_server(webhooks_config(storages[name]), tmp / name, ports[name], core=0)
            )
        url = "http://127.0.0.1:{}/webhook/x"
        headers = {name: {} if name == "baseline" else SECRET_HEADER for name in names}
        for name in names:  # warm up
            wrk(url.format(ports[name]), BODY, headers[name], seconds=1)
        for _, name in abba(names, rounds):
            watch = Watch(POSTGRES_URL, database) if name == "postgresql" else None
            before, host = cpu_seconds(servers[name].proc.pid), host_cpu()
            run: dict[str, Any] = wrk(url.format(ports[name]), BODY, headers[name], seconds=seconds)
            run["cpu_us"] = 1e6 * (cpu_seconds(servers[name].proc.pid) - before) / run["requests"]
            run["steal"] = stolen(host, host_cpu())
            if watch is not None:
                watch.stop()
                wait_briefly()
                run["db"] = watch.finish()
                run.update(per_unit(run["db"], run["requests"]))
            runs[name].append(run)
            others = f", others {run['others_cpu_s']:.2f} s" if watch else ""
            print(
                f"  ingest {name}: {run['rps']:,.0f} req/s, {run['cpu_us']:.0f} µs CPU "
                f"per request, {run['steal']:.0%} stolen{others}",
                flush=True,
            )
    return summarise(runs, "rps")


def single_outgoing(db_url: str, database: str, events: int, rounds: int) -> dict[str, Any]:
    """Durable outgoing deliveries in this process (core 0) to a sink on core 1: a bare
    aiohttp POST loop, the outbox on SQLite and the outbox on PostgreSQL, alternating."""
    names = ["baseline", "sqlite", "postgresql"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    if hasattr(os, "sched_setaffinity") and CORES >= 2:
        os.sched_setaffinity(0, {0})
    port = free_port()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sink = Path(tmp) / "sink.py"
            sink.write_text(SINK)
            with Server([sys.executable, str(sink), str(port)], port, core=1):
                url = f"http://127.0.0.1:{port}/in"
                for i, name in abba(names, rounds):
                    watch = Watch(POSTGRES_URL, database) if name == "postgresql" else None
                    host, cpu = host_cpu(), time.process_time()
                    if name == "baseline":
                        rate = run_async(baseline(url, events, 64))
                    else:
                        storage = {"url": db_url, "schema": f"out{i}"} if watch else {}
                        # The window closes once every delivery is done, before the runtime
                        # stops and its connections close.
                        end = watch.stop if watch else None
                        workdir = Path(tmp) / f"r{i}"
                        rate = run_async(durable(url, events, 64, 1000, workdir, storage, end))
                    run: dict[str, Any] = {
                        "rps": rate,
                        "cpu_us": 1e6 * (time.process_time() - cpu) / events,
                        "steal": stolen(host, host_cpu()),
                    }
                    if watch is not None:
                        # runtime.stop() has closed the pool: every backend has reported
                        run["db"] = watch.finish()
                        run.update(per_unit(run["db"], events))
                    runs[name].append(run)
                    print(
                        f"  outgoing {name}: {rate:,.0f}/s, {run['cpu_us']:.0f} µs CPU each, "
                        f"{run['steal']:.0%} stolen",
                        flush=True,
                    )
    finally:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(CORES)))
    return summarise(runs, "rps")


def summarise(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for name, rs in runs.items():
        out[name] = {
            k: statistics.median(r[k] for r in rs)
            for k in rs[0]
            if isinstance(rs[0][k], float | int)
        }
    for name in ("sqlite", "postgresql"):
        for against in ("baseline", "sqlite"):
            if name != against:
                each = [a[key] / b[key] for a, b in zip(runs[name], runs[against], strict=True)]
                out[f"{name}/{against}"] = statistics.median(each)
    return out


def outbox_done(db_url: str, schema: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            return int(
                await conn.fetchval(f"SELECT count(*) FROM \"{schema}\".outbox WHERE status='done'")
            )
        finally:
            await conn.close()

    return run_async(count())


def scale_run(
    db_url: str, database: str, n: int, workload: str, seconds: int, schema: str, paced: float
) -> dict[str, Any]:
    """``n`` serve processes on one schema, left to the scheduler (PostgreSQL shares the
    cores with them), one wrk per port on core 1 with 32 connections in all: flat out, or
    paced to about ``paced`` webhooks/s in all when it is not 0."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sink = None
        if workload.startswith("ingest+outgoing"):
            sink_port = free_port()
            (tmp / "sink.py").write_text(SINK)
            stack.enter_context(
                Server([sys.executable, str(tmp / "sink.py"), str(sink_port)], sink_port, core=1)
            )
            sink = f"http://127.0.0.1:{sink_port}/in"
        storage = {"url": db_url, "schema": schema}
        servers: list[tuple[Server, int]] = []
        for k in range(n):
            port = free_port()
            (tmp / str(k)).mkdir()
            server = webhooks_server(webhooks_config(storage, sink), tmp / str(k), port, core=None)
            stack.callback(server.stop)
            servers.append((server, port))
        urls = [f"http://127.0.0.1:{port}/webhook/x" for _, port in servers]
        per = max(32 // n, 1)
        delay = 1000 * 32 / paced if paced else 0.0
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(n))

        def load(secs: int) -> list[dict[str, float]]:
            return list(
                pool.map(
                    lambda u: wrk(
                        u, BODY, SECRET_HEADER, connections=per, seconds=secs, delay_ms=delay
                    ),
                    urls,
                )
            )

        load(1)  # warm up
        done = outbox_done(db_url, schema) if sink else 0
        watch = Watch(POSTGRES_URL, database)
        cpu = [cpu_seconds(s.proc.pid) for s, _ in servers]
        host, started = host_cpu(), time.perf_counter()
        got = load(seconds)
        elapsed = time.perf_counter() - started
        watch.stop()
        host_after = host_cpu()
        gateway = sum(cpu_seconds(s.proc.pid) - c for (s, _), c in zip(servers, cpu, strict=True))
        delivered = (outbox_done(db_url, schema) - done) if sink else 0
    # The servers have stopped and closed their connections: every backend has reported.
    db = watch.finish()
    webhooks = sum(r["requests"] for r in got)
    return {
        "workload": workload,
        "processes": n,
        "webhooks_per_s": sum(r["rps"] for r in got),
        "deliveries_per_s": delivered / elapsed,
        "p99_ms": max(r.get("p99_ms", 0.0) for r in got),
        "non2xx": sum(r["non2xx"] for r in got),
        "gateway_cpu_us": 1e6 * gateway / max(webhooks, 1),
        **per_unit(db, webhooks),
        "host_busy": busy(host, host_after),
        "steal": stolen(host, host_after),
        "gateway_cores": gateway / elapsed,
        "db_cores": (db["cpu_s"].get("backends", 0.0) + db["cpu_s"].get("background", 0.0))
        / elapsed,
        "db": db,
    }


def scale_out(
    db_url: str, database: str, counts: list[int], seconds: int, rounds: int, paced: float
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cases = [("ingest", 0.0), (f"ingest paced {paced:.0f}/s", paced), ("ingest+outgoing", 0.0)]
    for workload, rate in cases:
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        for i, n in abba(counts, rounds):
            schema = f"scale{len(rows)}_{n}_{i}"
            run = scale_run(db_url, database, n, workload, seconds, schema, rate)
            runs[n].append(run)
            print(
                f"  {workload}, {n} processes: {run['webhooks_per_s']:,.0f} webhooks/s, "
                f"{run['deliveries_per_s']:,.0f} deliveries/s, db {run['db_cpu_us']:.0f} µs "
                f"+ gateway {run['gateway_cpu_us']:.0f} µs per webhook, host busy "
                f"{run['host_busy']:.0%}, {run['steal']:.0%} stolen, "
                f"{run['db']['connections_max']} connections; others meanwhile: "
                f"{run['others_cpu_s']:.2f} s CPU, {run['others_xacts']:.0f} transactions",
                flush=True,
            )
        for n in counts:
            rs = runs[n]
            row = {
                k: statistics.median(r[k] for r in rs)
                for k in rs[0]
                if isinstance(rs[0][k], float | int) and k != "processes"
            }
            row.update(
                workload=workload,
                processes=n,
                connections_max=max(r["db"]["connections_max"] for r in rs),
                waits=merge(r["db"]["waits"] for r in rs),
                lock_waits=merge(r["db"]["lock_waits"] for r in rs),
                samples=sum(r["db"]["samples"] for r in rs),
                runs=rs,
            )
            rows.append(row)
    return rows


def merge(counters: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counters:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def model(single: dict[str, Any], outgoing: dict[str, Any]) -> dict[str, float]:
    """Per-unit CPU costs and what follows from them."""
    pg, out = single["postgresql"], outgoing["postgresql"]
    return {
        "gateway_us_per_webhook": pg["cpu_us"],
        "db_us_per_webhook": pg["db_cpu_us"],
        "gateway_us_per_delivery": out["cpu_us"],
        "db_us_per_delivery": out["db_cpu_us"],
        "webhooks_per_db_core": 1e6 / pg["db_cpu_us"],
        "deliveries_per_db_core": 1e6 / out["db_cpu_us"],
        # A process flat out keeps one core busy: gateway cores one database core carries.
        "processes_per_db_core_ingest": pg["cpu_us"] / pg["db_cpu_us"],
        "processes_per_db_core_outgoing": out["cpu_us"] / out["db_cpu_us"],
    }


def per_transaction(results: dict[str, Any]) -> dict[str, float]:
    """The database's CPU per webhook as a fixed part per webhook plus a part per
    transaction (a commit and its round trips), fitted over every ingest-only run: grouping
    writes makes the second part shrink as the load on each process grows."""
    runs = list(results.get("ingest", {}).get("runs", {}).get("postgresql", []))
    for row in results.get("scale", []):
        if "outgoing" not in row["workload"]:
            runs += row["runs"]
    if len(runs) < 3:
        return {}
    fit = statistics.linear_regression([r["xacts"] for r in runs], [r["db_cpu_us"] for r in runs])
    return {
        "db_us_per_webhook_fixed": fit.intercept,
        "db_us_per_transaction": fit.slope,
        "runs": len(runs),
        "correlation": statistics.correlation(
            [r["xacts"] for r in runs], [r["db_cpu_us"] for r in runs]
        ),
    }


def plot(rows: list[dict[str, Any]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(1, 1.4))
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    colors = dict(zip(workloads, ("#2a7", "#c83", "#27a", "#a2a"), strict=False))
    for workload in workloads:
        rs = [r for r in rows if r["workload"] == workload]
        xs = [r["processes"] for r in rs]
        left.plot(
            xs,
            [r["webhooks_per_s"] for r in rs],
            "o-",
            color=colors[workload],
            label=f"{workload}: webhooks/s",
        )
        if "outgoing" in workload:
            left.plot(
                xs,
                [r["deliveries_per_s"] for r in rs],
                "s--",
                color=colors[workload],
                label=f"{workload}: deliveries/s",
            )
    left.set_xlabel("serve processes sharing one PostgreSQL")
    left.set_ylabel("per second, all processes together")
    left.set_xticks(sorted({r["processes"] for r in rows}))
    left.set_ylim(bottom=0)
    left.legend(fontsize=7, loc="lower left")
    left.set_title("throughput (2 cores shared by all)", fontsize=9)
    labels = [f"{r['processes']}x\n{short(r['workload'])}" for r in rows]
    parts = (
        ("gateway_cpu_us", "gateway processes", "#bbb"),
        ("db_backends_us", "PostgreSQL backends", "#27a"),
        ("db_background_us", "PostgreSQL background", "#9cf"),
    )
    bottom = [0.0] * len(rows)
    for key, label, color in parts:
        values = [r[key] for r in rows]
        right.bar(labels, values, bottom=bottom, color=color, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, (r, top) in enumerate(zip(rows, bottom, strict=True)):
        right.annotate(f"{r['xacts']:.2f}", (x, top), ha="center", va="bottom", fontsize=7)
    right.set_ylabel("CPU µs per webhook")
    right.set_title("CPU per webhook (label: transactions per webhook)", fontsize=9)
    right.tick_params(axis="x", labelsize=7)
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = RESULTS / "capacity.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def short(workload: str) -> str:
    return "paced" if "paced" in workload else workload.replace("ingest+outgoing", "in+out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--events", type=int, default=5000, help="per outgoing run")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument(
        "--paced", type=float, default=600, help="webhooks/s in all, for the paced runs"
    )
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    missing = postgres_missing()
    if missing:
        sys.exit(f"capacity: not measured: {missing}")
    host = host_cpu()
    results: dict[str, Any] = {"cores": CORES}
    with scratch_database(POSTGRES_URL) as database:
        db_url = with_database(POSTGRES_URL, database)
        if not args.skip_single:
            print("== one process: ingest", flush=True)
            results["ingest"] = single_ingest(db_url, database, args.seconds, args.rounds)
            print("== one process: outgoing", flush=True)
            results["outgoing"] = single_outgoing(db_url, database, args.events, args.rounds)
            results["model"] = model(results["ingest"], results["outgoing"])
        if not args.skip_scale:
            print("== several processes on one database", flush=True)
            results["scale"] = scale_out(
                db_url, database, args.processes, args.seconds, max(args.rounds - 1, 1), args.paced
            )
    results["steal"] = stolen(host, host_cpu())
    results["per_transaction"] = per_transaction(results)
    report(results)
    save("capacity", results)
    if results.get("scale"):
        path = plot(results["scale"])
        if path:
            print(f"plot: {path}")


def report(results: dict[str, Any]) -> None:
    for part in ("ingest", "outgoing"):
        if part not in results:
            continue
        r = results[part]
        rows = [{"server": n, **r[n]} for n in ("baseline", "sqlite", "postgresql")]
        print(f"-- one process, {part} (medians)")
        print(
            table(
                rows,
                [
                    "server",
                    "rps",
                    "cpu_us",
                    "db_cpu_us",
                    "db_backends_us",
                    "db_background_us",
                    "wal_bytes",
                    "xacts",
                    "rows_written",
                    "steal",
                ],
            )
        )
        print(
            f"postgresql/sqlite {r['postgresql/sqlite']:.2f}, postgresql/baseline "
            f"{r['postgresql/baseline']:.2f}, sqlite/baseline {r['sqlite/baseline']:.2f}"
        )
    if "model" in results:
        print("-- model")
        for k, v in results["model"].items():
            print(f"  {k}: {v:,.2f}")
    if results.get("per_transaction"):
        print("-- database CPU per webhook = fixed + per transaction x transactions per webhook")
        for k, v in results["per_transaction"].items():
            print(f"  {k}: {v:,.2f}")
    if "scale" in results:
        print("-- several processes (medians)")
        print(
            table(
                results["scale"],
                [
                    "workload",
                    "processes",
                    "webhooks_per_s",
                    "deliveries_per_s",
                    "gateway_cpu_us",
                    "db_cpu_us",
                    "wal_bytes",
                    "xacts",
                    "gateway_cores",
                    "db_cores",
                    "host_busy",
                    "steal",
                    "connections_max",
                    "p99_ms",
                    "non2xx",
                ],
            )
        )
        for r in results["scale"]:
            print(
                f"  {r['workload']} x{r['processes']}: waits {r['waits']}; "
                f"lock waits {r['lock_waits']} ({r['samples']} samples)"
            )
    print(f"host CPU stolen by other guests over the whole run: {results['steal']:.0%}")


if __name__ == "__main__":
    main()

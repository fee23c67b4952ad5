"""A burst larger than the pipeline holds in memory waits in the store, in arrival order."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path


async def test_a_burst_waits_in_the_store_and_runs_in_arrival_order(
    start_server, tmp_path: Path
) -> None:
    (tmp_path / "burst_fns.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            seen = []

            async def slow(ctx):
                seen.append(ctx.delivery.id)
                await asyncio.sleep(0.005)
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("burst_fns", None)
    config = {
        "incoming": {"concurrency": 2},  # at most 8 deliveries held in memory
        "handlers": [
            {
                "id": "b",
                "action": "custom",
                "function": "burst_fns:slow",
                "sessionMode": "persistent",
                "sessionKey": "one-conversation",
            },
        ],
    }
    srv = await start_server(config)
    pipeline = srv.runtime.pipeline
    most = 0
    backlogged = False

    async def watch() -> None:
        nonlocal most, backlogged
        while True:
            most = max(most, len(pipeline.held_ids()))
            backlogged |= pipeline.backlogged
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    # One after another, so the arrival order is defined; the actions (one session: one at a
    # time, 5 ms each) fall behind at once.
    answers = [await srv.post("b", {"n": n}) for n in range(60)]
    await srv.idle(timeout=30)
    watcher.cancel()
    import burst_fns

    assert all(status == 202 for status, _ in answers)
    for _, body in answers:
        record = await srv.runtime.store.get_incoming(body["id"])
        assert record is not None and record.status == "done"
    # Every delivery ran once, in the order the server received them (one persistent
    # session: order matters), although most of them waited in the store, not in memory.
    assert burst_fns.seen == [body["id"] for _, body in answers]
    assert backlogged
    assert most <= 8

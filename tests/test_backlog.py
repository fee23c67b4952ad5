"""A burst larger than the pipeline holds in memory waits in the store, in arrival order."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any


async def test_a_burst_waits_in_the_store_and_runs_in_arrival_order(
    start_server, tmp_path: Path
) -> None:
    (tmp_path / "burst_fns.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            seen = []
            gate = asyncio.Event()

            async def slow(ctx):
                seen.append(ctx.delivery.id)
                await gate.wait()
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

    import burst_fns

    watcher = asyncio.create_task(watch())
    # One after another, so the arrival order is defined. The actions (one session: one at a
    # time) wait until the whole burst is in, so they are behind however fast the store is.
    answers = [await srv.post("b", {"n": n}) for n in range(60)]
    burst_fns.gate.set()
    await srv.idle(timeout=30)
    watcher.cancel()

    assert all(status == 202 for status, _ in answers)
    for _, body in answers:
        record = await srv.runtime.store.get_incoming(body["id"])
        assert record is not None and record.status == "done"
    # Every delivery ran once, in the order the server received them (one persistent
    # session: order matters), although most of them waited in the store, not in memory.
    assert burst_fns.seen == [body["id"] for _, body in answers]
    assert backlogged
    assert most <= 8


async def test_slots_take_turns_in_order_and_never_leak_on_cancellation() -> None:
    from clawdbot_webhooks.slots import Slots

    slots = Slots(2)
    assert slots.take() and slots.take() and not slots.take()
    order: list[int] = []

    async def wait_then_note(n: int) -> None:
        await slots.wait()
        order.append(n)

    waiters = [asyncio.create_task(wait_then_note(n)) for n in range(4)]
    await asyncio.sleep(0)
    waiters[1].cancel()  # cancelled while waiting: leaves the queue
    slots.give()  # handed to 0
    slots.give()  # handed to 2 (1 is gone)
    waiters[3].cancel()
    await asyncio.sleep(0)
    await asyncio.gather(*waiters, return_exceptions=True)
    assert order == [0, 2]
    # 3 was cancelled before it got anything: two slots are held (by 0 and 2), none free
    assert not slots.take()
    slots.give()
    slots.give()
    assert slots.take() and slots.take() and not slots.take()

    # A waiter handed a slot and cancelled before it resumes passes the slot on.
    late = asyncio.create_task(slots.wait())
    await asyncio.sleep(0)
    slots.give()
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert slots.take() and not slots.take()


async def test_a_delivery_stored_while_the_backlog_is_claimed_is_not_overtaken(
    start_server, tmp_path: Path
) -> None:
    """The backlog ends when a claim finds fewer due deliveries than places. A delivery stored
    behind the backlog while that claim ran is missing from it; if the backlog ended then, the
    next delivery would run at once, before it. This forces that moment."""
    (tmp_path / "gate_fns.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            seen = []
            gate = asyncio.Event()

            async def gated(ctx):
                await gate.wait()
                seen.append(ctx.delivery.id)
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("gate_fns", None)
    config = {
        "incoming": {"concurrency": 1},  # at most 4 deliveries held in memory
        "handlers": [{"id": "g", "action": "custom", "function": "gate_fns:gated"}],
    }
    srv = await start_server(config)
    import gate_fns

    pipeline, store = srv.runtime.pipeline, srv.runtime.store
    ids = [(await srv.post("g", {"n": n}))[1]["id"] for n in range(5)]  # 4 held, 1 stored
    assert pipeline.backlogged
    claim = store.claim_incoming
    raced: list[str] = []

    async def claim_raced_by_a_delivery(limit: int, lease: float) -> list[Any]:
        store.claim_incoming = claim  # once
        claimed = asyncio.create_task(claim(limit, lease))
        await asyncio.sleep(0)  # the claim is queued
        deferred = pipeline._deferred
        post = asyncio.create_task(srv.post("g", {"n": 5}))
        while pipeline._deferred == deferred:  # it is being stored behind the backlog
            await asyncio.sleep(0.001)
        result = await claimed
        raced.append((await post)[1]["id"])
        return result

    store.claim_incoming = claim_raced_by_a_delivery
    gate_fns.gate.set()  # the held ones finish; a place frees up; the poller claims
    while not raced:
        await asyncio.sleep(0.005)
    ids += raced
    ids.append((await srv.post("g", {"n": 6}))[1]["id"])
    await srv.idle(timeout=10)
    assert gate_fns.seen == ids

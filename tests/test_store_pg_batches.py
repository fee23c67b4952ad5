"""PostgreSQL writes what many callers hand it at once together: webhooks received at the same
time in one statement, outgoing rows of events published together in one transaction. Each
caller still gets what a transaction of its own would have given it, and a call the database
refuses fails alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from clawdbot_webhooks.store import open_store
from tests.conftest import incoming_record, outgoing_record

BACKENDS = ["postgres"]


@pytest.fixture
async def store(storage: dict[str, Any]) -> AsyncIterator[Any]:
    opened = open_store(storage["url"], schema=storage["schema"])
    await opened.open()
    yield opened
    await opened.close()


async def test_calls_made_together_get_what_calls_one_by_one_would(
    store: Any, storage: dict[str, Any]
) -> None:
    calls = [[outgoing_record(n, session=f"s{n % 3}")] for n in range(30)]
    calls.append([outgoing_record(0, session="s0")])  # the same id again, in the same transaction
    results = await asyncio.gather(*(store.add_outgoing(rows, 30) for rows in calls))
    assert results[:30] == [[rows[0].id] for rows in calls[:30]]
    assert results[30] == []  # not new: the first call stored it
    # Stored in the order they were handed over, every one leased to this process.
    assert await _leases(storage) == [(rows[0].id, store.owner) for rows in calls[:30]]

    # A row behind another process's lease in its lane is stored, but left to that lane.
    await _lease_to_someone_else(storage, calls[0][0].id)
    [[], [free]] = await asyncio.gather(
        store.add_outgoing([outgoing_record(30, session="s0")], 30),
        store.add_outgoing([outgoing_record(31, session="elsewhere")], 30),
    )
    assert free == outgoing_record(31).id
    # Two rows of that lane in one call: both wait behind it, the second as the first.
    assert (
        await store.add_outgoing([outgoing_record(32, "s0"), outgoing_record(33, "s0")], 30) == []
    )
    leases = dict(await _leases(storage))
    assert leases[outgoing_record(30).id] is None and leases[outgoing_record(31).id] == store.owner


async def test_a_row_nobody_leased_holds_back_later_rows_of_its_lane(store: Any) -> None:
    # Stored without a lease (the outbox was not running), then a leased call in the same
    # transaction: its row of that lane waits behind the first, as it would have alone.
    unleased, leased = await asyncio.gather(
        store.add_outgoing([outgoing_record(1, "lane")], 0),
        store.add_outgoing([outgoing_record(2, "lane"), outgoing_record(3, "other")], 30),
    )
    assert unleased == [outgoing_record(1).id]
    assert leased == [outgoing_record(3).id]


async def _sql(storage: dict[str, Any], query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(storage["url"], server_settings={"search_path": storage["schema"]})
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _leases(storage: dict[str, Any]) -> list[tuple[str, str | None]]:
    rows = await _sql(storage, "SELECT id, lease_owner FROM outbox ORDER BY seq")
    return [(row["id"], row["lease_owner"]) for row in rows]


async def _lease_to_someone_else(storage: dict[str, Any], row_id: str) -> None:
    await _sql(
        storage,
        "UPDATE outbox SET lease_owner='other', lease_until=$2 WHERE id=$1",
        row_id,
        time.time() + 60,
    )


async def test_a_call_the_database_refuses_fails_alone(store: Any) -> None:
    # PostgreSQL's text cannot hold NUL: that call's row is refused, the others are stored.
    good = [[outgoing_record(n)] for n in range(5)]
    bad = [outgoing_record(5, session="bad\x00session")]
    results = await asyncio.gather(
        *(store.add_outgoing(rows, 30) for rows in [*good[:2], bad, *good[2:]]),
        return_exceptions=True,
    )
    assert isinstance(results[2], Exception) and not isinstance(results[2], list)
    assert [r for r in results if isinstance(r, list)] == [[rows[0].id] for rows in good]
    for rows in good:
        assert await store.get_outgoing(rows[0].id) is not None
    assert await store.get_outgoing(bad[0].id) is None


async def test_a_cancelled_caller_does_not_stop_the_others(store: Any) -> None:
    first = asyncio.ensure_future(store.add_outgoing([outgoing_record(1)], 30))
    second = asyncio.ensure_future(store.add_outgoing([outgoing_record(2)], 30))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == [outgoing_record(2).id]
    # Cancelled before its batch was written: not stored at all. (A row leased to this
    # process that nobody sends would let later rows of its lane overtake it.)
    assert await store.get_outgoing(outgoing_record(1).id) is None


async def test_deliveries_stored_together_are_told_apart_by_their_keys(store: Any) -> None:
    now = time.time()
    records = [incoming_record("k", now), incoming_record("k", now + 1), incoming_record("o", now)]
    records.append(incoming_record("k", now + 2))
    stored = await asyncio.gather(*(store.add_incoming(r, 30, now - 60) for r in records))
    assert stored == [True, False, True, False]
    assert await store.count_incoming() == 2
    # Once the first of a key is older than the window, the key is free again.
    assert await store.add_incoming(incoming_record("k", now + 3), 30, now + 0.5)
    assert await store.count_incoming() == 3


async def test_a_delivery_the_database_refuses_fails_alone(store: Any) -> None:
    now = time.time()
    good, bad = incoming_record("a", now), incoming_record("b", now, session="bad\x00session")
    later = incoming_record("c", now)
    stored = await asyncio.gather(
        *(store.add_incoming(r, 30) for r in (good, bad, later)), return_exceptions=True
    )
    assert stored[0] is True and stored[2] is True
    assert isinstance(stored[1], asyncpg.PostgresError)
    assert await store.count_incoming() == 2


async def test_the_same_delivery_twice_in_one_statement_is_stored_once(store: Any) -> None:
    record = incoming_record("same", time.time())
    stored = await asyncio.gather(
        store.add_incoming(record, 30),
        store.add_incoming(record, 30),
        return_exceptions=True,
    )
    assert stored[0] is True
    assert isinstance(stored[1], ValueError)  # as it would be alone: the id exists already
    assert await store.count_incoming() == 1

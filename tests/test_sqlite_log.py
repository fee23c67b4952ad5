"""The local gateway's SQLite log: operations that raise are undone alone; the others of the
batch commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from clawdbot_webhooks.builtin.local_gateway import LocalGateway
from clawdbot_webhooks.builtin.sqlite_log import LogWriter


async def test_an_operation_that_raises_is_undone_alone(tmp_path: Path) -> None:
    log = LogWriter(tmp_path / "log.sqlite3", "CREATE TABLE IF NOT EXISTS t (n INTEGER UNIQUE);")
    await log.open()
    try:

        def insert(n: int) -> object:
            return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (n,)).rowcount

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (100)")
            conn.execute("INSERT INTO t VALUES (1)")  # taken: the whole operation is undone

        # Asked for in one turn of the loop: they share a transaction when the writer is quick
        # enough to find them queued together, and the outcome is the same when it is not.
        futures = [log.run(insert(1)), log.run(half_then_fail), log.run(insert(2))]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[0] == 1 and results[2] == 1
        assert isinstance(results[1], sqlite3.IntegrityError)
        rows = await log.run(lambda conn: conn.execute("SELECT n FROM t ORDER BY n").fetchall())
        assert rows == [(1,), (2,)]
    finally:
        await log.close()


def _open_at_once(path: Path, start: threading.Barrier, failures: list[BaseException]) -> None:
    log = LogWriter(path, "CREATE TABLE IF NOT EXISTS t (n INTEGER);")
    start.wait()
    try:
        log._connect().close()
    except Exception as exc:
        failures.append(exc)


def test_logs_opening_one_new_file_at_once_all_get_it(tmp_path: Path) -> None:
    # Processes starting together: SQLite refuses all but one switch to WAL at once.
    for round_ in range(30):
        path = tmp_path / f"shared-{round_}.sqlite3"
        start = threading.Barrier(4)
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=_open_at_once, args=(path, start, failures)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


async def test_a_message_is_sent_once_per_idempotency_key(tmp_path: Path) -> None:
    gateway = LocalGateway(tmp_path / "local-gateway.sqlite3")
    await gateway.start()
    try:
        send = {"channel": "c", "peer": "p", "text": "hi", "session": "s"}
        first = await gateway.send_message(**send, idempotency_key="k1")
        again = await gateway.send_message(**{**send, "text": "changed"}, idempotency_key="k1")
        other = await gateway.send_message(**send, idempotency_key="k2")
        assert again == first and other["messageId"] != first["messageId"]
        # In one batch, a repeat right after another key's message: the row it finds is its
        # own key's, not the one inserted just before it.
        k3, k4, k3_again = await asyncio.gather(
            gateway.send_message(**send, idempotency_key="k3"),
            gateway.send_message(**send, idempotency_key="k4"),
            gateway.send_message(**send, idempotency_key="k3"),
        )
        assert k3_again == k3 and k4["messageId"] != k3["messageId"]
    finally:
        await gateway.close()
    with sqlite3.connect(tmp_path / "local-gateway.sqlite3") as conn:
        rows = conn.execute("SELECT idempotency_key, text FROM messages ORDER BY n").fetchall()
    assert rows == [("k1", "hi"), ("k2", "hi"), ("k3", "hi"), ("k4", "hi")]


async def test_the_log_checkpoints_between_batches(tmp_path: Path) -> None:
    # SQLite's own checkpoint is off (it would run inside a commit callers wait for); the
    # writer's thread checkpoints between batches, so the WAL starts over rather than grows.
    path = tmp_path / "log.sqlite3"
    log = LogWriter(path, "CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, text TEXT);")
    await log.open()
    try:
        for n in range(1500):  # a commit each: some 12 MB of WAL without a checkpoint
            await log.run(lambda conn, n=n: conn.execute("INSERT INTO t VALUES (?, ?)", (n, "x")))
        assert path.with_name(path.name + "-wal").stat().st_size < 4 * 1024 * 1024
    finally:
        await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1500


async def test_long_prompts_and_replies_bring_the_checkpoint_nearer_by_their_size(
    tmp_path: Path,
) -> None:
    # An agent run counts by the length of its prompt and reply, not as one operation: 100 MB
    # of them leave the WAL some MB rather than a hundred.
    path = tmp_path / "local-gateway.sqlite3"
    gateway = LocalGateway(path)
    await gateway.start()
    prompt = "y" * (256 * 1024)
    try:
        for n in range(200):
            await gateway.run_agent(
                agent_id="a", message=prompt, session=f"s{n}", idempotency_key=f"k{n}"
            )
        assert path.with_name(path.name + "-wal").stat().st_size < 40 * 1024 * 1024
    finally:
        await gateway.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE kind='reply'").fetchone()[0] == 200


async def test_a_turn_s_operations_commit_on_the_loop_while_the_thread_is_idle(
    tmp_path: Path,
) -> None:
    log = LogWriter(tmp_path / "log.sqlite3", "CREATE TABLE IF NOT EXISTS t (n INTEGER);")
    await log.open()
    try:
        for n in range(3):
            await asyncio.gather(
                *(
                    log.run(lambda conn, k=k: conn.execute("INSERT INTO t VALUES (?)", (k,)))
                    for k in range(n, n + 5)
                )
            )
        assert log._queued == 0  # nothing went to the thread
        # Committed, as another connection sees.
        with sqlite3.connect(tmp_path / "log.sqlite3") as other:
            assert other.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 15
    finally:
        await log.close()


async def test_a_busy_file_sends_the_turn_to_the_thread_which_waits_for_the_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite3"
    log = LogWriter(path, "CREATE TABLE IF NOT EXISTS t (n INTEGER);")
    await log.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing
        pending = log.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)").rowcount)
        await asyncio.sleep(0.2)
        assert not pending.done() and log._queued == 1  # the thread waits for the lock
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 5) == 1
        # The thread done, the loop's connection takes the next turn again.
        assert await log.run(lambda conn: conn.execute("INSERT INTO t VALUES (2)").rowcount) == 1
        assert log._queued == 1
    finally:
        other.close()
        await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]


async def test_an_agent_s_turn_is_counted_from_an_index_not_the_whole_log(
    tmp_path: Path,
) -> None:
    # Every run counts its session's prompts; the log only grows, so a scan of it made each
    # run slower than the one before.
    gateway = LocalGateway(tmp_path / "local-gateway.sqlite3")
    await gateway.start()
    try:
        for turn in (1, 2):
            reply = await gateway.run_agent(
                agent_id="a", message="hi", session="s", idempotency_key=f"k{turn}"
            )
            assert reply.text == f"[a #{turn}] hi"
        other = await gateway.run_agent(
            agent_id="a", message="hi", session="t", idempotency_key="k3"
        )
        assert other.text == "[a #1] hi"
    finally:
        await gateway.close()
    with sqlite3.connect(tmp_path / "local-gateway.sqlite3") as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM messages WHERE session=? AND kind='prompt'",
            ("s",),
        ).fetchall()
    assert "USING INDEX messages_prompts" in plan[0][3]

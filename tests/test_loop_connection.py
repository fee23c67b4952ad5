"""``clawdbot_webhooks_hookspecs.sqlite``: a connection that commits on the event loop's
thread only where a commit does not wait for the disk, never waits for a lock, and keeps
nothing of work that could not commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from clawdbot_webhooks_hookspecs.sqlite import LoopConnection, switch_to_wal


def _wal_file(path: Path) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    switch_to_wal(conn)
    conn.execute("CREATE TABLE t (n INTEGER UNIQUE)")
    conn.close()
    return path


def _rows(path: Path) -> list[tuple[int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT n FROM t ORDER BY n").fetchall()


@pytest.mark.parametrize("synchronous", ["FULL", "EXTRA", "2"])
def test_none_where_a_commit_waits_for_the_disk(tmp_path: Path, synchronous: str) -> None:
    assert LoopConnection.open(_wal_file(tmp_path / "a.db"), synchronous) is None


def test_none_for_a_file_not_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "rollback.db"
    sqlite3.connect(path).execute("CREATE TABLE t (n INTEGER)").connection.close()
    assert LoopConnection.open(path) is None


def test_work_is_committed_or_nothing_of_it_is_kept(tmp_path: Path) -> None:
    path = _wal_file(tmp_path / "a.db")
    conn = LoopConnection.open(path)
    assert conn is not None
    try:
        assert conn.commit(lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount) == 1
        assert _rows(path) == [(1,)]  # committed: another connection sees it

        def half(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO t VALUES (2)")
            c.execute("INSERT INTO t VALUES (1)")  # taken: the whole work is undone
            return 0

        assert conn.commit(half) is None
        assert _rows(path) == [(1,)]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            assert conn.commit(lambda c: c.execute("INSERT INTO t VALUES (3)").rowcount) is None
        finally:
            other.execute("COMMIT")
            other.close()
        assert conn.commit(lambda c: c.execute("INSERT INTO t VALUES (3)").rowcount) == 1
        assert _rows(path) == [(1,), (3,)]
    finally:
        conn.close()
    assert conn.commit(lambda c: 1) is None  # closed: nothing runs

"""The digest's own small SQLite file: gathered items survive a crash until they are sent.

One writer (this process) per file; every call runs in a worker thread under one lock, so the
event loop never waits on the disk. ``synchronous=FULL``: an item is on disk before the
delivery that carried it is acknowledged as done.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FILE_NAME = "digest.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY,
    handler TEXT NOT NULL,
    spec TEXT NOT NULL,        -- JSON: destination, title, window, maxItems, session
    deadline REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    delivery TEXT NOT NULL,
    text TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (bucket, delivery)  -- a retried delivery is gathered once
);
CREATE TABLE IF NOT EXISTS directories (path TEXT PRIMARY KEY);
"""


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    delivery: str
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    handler: str
    spec: dict[str, Any]
    deadline: float


class DigestStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    async def _do(self, op: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._lock:
                if self._conn is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    conn = sqlite3.connect(self.path, check_same_thread=False)
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.executescript(SCHEMA)
                    self._conn = conn
                with self._conn:
                    return op(self._conn)

        return await asyncio.to_thread(run)

    async def gather(
        self, key: str, handler: str, spec: dict[str, Any], deadline: float, item: Item
    ) -> int:
        """Store one item (once per delivery); returns how many the bucket holds now."""

        def op(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT OR IGNORE INTO buckets (key, handler, spec, deadline) VALUES (?, ?, ?, ?)",
                (key, handler, json.dumps(spec), deadline),
            )
            conn.execute(
                "INSERT OR IGNORE INTO items (bucket, delivery, text, at) VALUES (?, ?, ?, ?)",
                (key, item.delivery, item.text, item.at),
            )
            row = conn.execute("SELECT COUNT(*) FROM items WHERE bucket = ?", (key,)).fetchone()
            return int(row[0])

        return await self._do(op)

    async def buckets(self) -> list[Bucket]:
        def op(conn: sqlite3.Connection) -> list[Bucket]:
            rows = conn.execute("SELECT key, handler, spec, deadline FROM buckets").fetchall()
            return [Bucket(k, h, json.loads(s), d) for k, h, s, d in rows]

        return await self._do(op)

    async def items(self, key: str, limit: int) -> list[Item]:
        def op(conn: sqlite3.Connection) -> list[Item]:
            rows = conn.execute(
                "SELECT seq, delivery, text, at FROM items WHERE bucket = ? "
                "ORDER BY at, seq LIMIT ?",
                (key, limit),
            ).fetchall()
            return [Item(*row) for row in rows]

        return await self._do(op)

    async def sent(self, key: str, items: list[Item], window: float) -> tuple[float, int] | None:
        """Forget the items a summary covered. Returns the bucket's next deadline and how many
        items remain, or ``None`` when the bucket is gone."""

        def op(conn: sqlite3.Connection) -> tuple[float, int] | None:
            conn.executemany("DELETE FROM items WHERE seq = ?", [(i.seq,) for i in items])
            row = conn.execute(
                "SELECT MIN(at), COUNT(*) FROM items WHERE bucket = ?", (key,)
            ).fetchone()
            if row[0] is None:
                conn.execute("DELETE FROM buckets WHERE key = ?", (key,))
                return None
            deadline = float(row[0]) + window
            conn.execute("UPDATE buckets SET deadline = ? WHERE key = ?", (deadline, key))
            return deadline, int(row[1])

        return await self._do(op)

    async def remember_directory(self, directory: Path) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO directories VALUES (?)", (str(directory),))

        await self._do(op)

    async def directories(self) -> list[Path]:
        def op(conn: sqlite3.Connection) -> list[Path]:
            return [Path(p) for (p,) in conn.execute("SELECT path FROM directories")]

        return await self._do(op)

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(run)

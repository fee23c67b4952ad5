"""Reading the local gateway's message log (an SQLite file in the state directory): for the
gateway itself, its ``messages`` command and tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

LOG_FILE = "local-gateway.sqlite3"


def read_log(state_dir: Path) -> list[dict[str, Any]]:
    """Every message the local gateway logged, oldest first."""
    return read_path(Path(state_dir) / LOG_FILE)


def read_path(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM messages ORDER BY n").fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()

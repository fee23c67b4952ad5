"""The embedded ``local`` gateway: the whole loop with no Clawdbot at all.

``send_message`` appends to a local message log and ``run_agent`` is answered by a
deterministic echo agent. Like Clawdbot, it deduplicates on the idempotency key: the same key
again returns the first answer and logs nothing new, so a re-run after a crash has one effect.
The log is an SQLite file in the state directory; ``clawdbot-webhooks messages`` prints it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import AgentReply, GatewayEnv, hookimpl

from clawdbot_webhooks.store.sqlite_writer import SQLiteWriter

LOG_FILE = "local-gateway.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,              -- sent | prompt | reply
    session TEXT NOT NULL,
    channel TEXT,
    peer TEXT,
    agent_id TEXT,
    text TEXT NOT NULL,
    idempotency_key TEXT,
    run_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_once ON messages (idempotency_key, kind)
    WHERE idempotency_key IS NOT NULL;
"""


def echo_reply(agent_id: str, message: str, turn: int) -> str:
    """The echo agent's deterministic answer; ``turn`` counts prompts in the session."""
    return f"[{agent_id} #{turn}] {message}"


class LocalGateway:
    def __init__(self, path: Path) -> None:
        self.path = path
        # The same group commit as the main store: many agent runs share one transaction.
        self._db = SQLiteWriter(path, _SCHEMA)
        self._open = False

    async def start(self) -> None:
        if not self._open:
            await self._db.open()
            self._open = True

    async def close(self) -> None:
        if self._open:
            await self._db.close()
            self._open = False

    @property
    def ready(self) -> bool:
        """Always, once started: it is a file beside the store (``/readyz`` reads this)."""
        return self._open

    async def probe(self) -> str:
        return f"local gateway (message log {self.path})"

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        await self.start()
        return await self._db._do(fn)

    async def send_message(
        self, *, channel: str, peer: str, text: str, session: str, idempotency_key: str
    ) -> Mapping[str, Any]:
        def op(conn: sqlite3.Connection) -> Mapping[str, Any]:
            row = conn.execute(
                "SELECT n FROM messages WHERE idempotency_key=? AND kind='sent'",
                (idempotency_key,),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "INSERT INTO messages (at, kind, session, channel, peer, text, "
                    "idempotency_key) VALUES (?, 'sent', ?, ?, ?, ?, ?) RETURNING n",
                    (time.time(), session, channel, peer, text, idempotency_key),
                ).fetchone()
            return {"messageId": f"local-{row[0]}", "channel": channel, "to": peer}

        result: Mapping[str, Any] = await self._write(op)
        return result

    async def run_agent(
        self, *, agent_id: str, message: str, session: str, idempotency_key: str
    ) -> AgentReply:
        def op(conn: sqlite3.Connection) -> AgentReply:
            row = conn.execute(
                "SELECT text FROM messages WHERE idempotency_key=? AND kind='reply'",
                (idempotency_key,),
            ).fetchone()
            if row is not None:
                return AgentReply(row[0], idempotency_key, agent_id)
            turn = (
                1
                + conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE session=? AND kind='prompt'", (session,)
                ).fetchone()[0]
            )
            reply = echo_reply(agent_id, message, turn)
            now = time.time()
            conn.executemany(
                "INSERT INTO messages (at, kind, session, agent_id, text, idempotency_key, "
                "run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (now, "prompt", session, agent_id, message, idempotency_key, idempotency_key),
                    (now, "reply", session, agent_id, reply, idempotency_key, idempotency_key),
                ],
            )
            return AgentReply(reply, idempotency_key, agent_id)

        reply: AgentReply = await self._write(op)
        return reply


def read_log(state_dir: Path) -> list[dict[str, Any]]:
    """Every message the local gateway logged, oldest first."""
    path = state_dir / LOG_FILE
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM messages ORDER BY n").fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


def create(options: Mapping[str, Any], env: GatewayEnv) -> LocalGateway:
    return LocalGateway(Path(env.state_dir) / LOG_FILE)


@hookimpl
def register_gateways(register: Callable[[str, Any], None]) -> None:
    register("local", create)


__all__ = ["LocalGateway", "create", "echo_reply", "read_log"]

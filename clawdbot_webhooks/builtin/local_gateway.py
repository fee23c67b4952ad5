"""The embedded ``local`` gateway: the whole loop with no Clawdbot at all.

``send_message`` appends to a local message log and ``run_agent`` is answered by a
deterministic echo agent; a run with ``deliver`` also logs its reply as a message sent to that
channel and peer, and ``wake`` logs the system event it would queue; a run's ``instructions``
are logged before its message. Like Clawdbot, it deduplicates on the idempotency key: the same
key again returns the first answer and logs nothing new, so a re-run after a crash has one
effect. The log is an SQLite file in the state directory; ``clawdbot-webhooks messages``
prints it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import (
    BOUNDARY_END,
    BOUNDARY_START,
    AgentReply,
    GatewayEnv,
    GatewayError,
    ReplyTarget,
    hookimpl,
)
from clawdbot_webhooks_hookspecs.sqlite import rows_for

from clawdbot_webhooks.builtin.local_log import LOG_FILE, read_log, read_path
from clawdbot_webhooks.builtin.local_messages import messages
from clawdbot_webhooks.builtin.sqlite_log import LogWriter

# ``n`` without AUTOINCREMENT: no row is ever deleted, so rowids only grow as they are, and
# AUTOINCREMENT wrote sqlite_sequence once per message (bench/README.md). Logs made before
# keep it.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,              -- sent | prompt | reply | wake
    session TEXT NOT NULL,
    channel TEXT,
    peer TEXT,
    agent_id TEXT,
    text TEXT NOT NULL,
    idempotency_key TEXT,
    run_id TEXT,
    options TEXT                     -- JSON: a prompt's run options, a wake's mode
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_once ON messages (idempotency_key, kind)
    WHERE idempotency_key IS NOT NULL;
-- An agent's turn counts its session's prompts: without this, every run read the whole log.
-- Prompts only, so a sent message (the common row) costs no entry here.
CREATE INDEX IF NOT EXISTS messages_prompts ON messages (session) WHERE kind = 'prompt';
"""


#: Logs written before run options were recorded lack the column.
_ADD_OPTIONS = "ALTER TABLE messages ADD COLUMN options TEXT"


def echo_reply(agent_id: str, message: str, turn: int) -> str:
    """The echo agent's deterministic answer; ``turn`` counts prompts in the session. It
    repeats what it was asked about: of a wrapped prompt, the content inside the boundary
    (without the notice, the instructions and the source lines)."""
    return f"[{agent_id} #{turn}] {_content_of(message)}"


def _content_of(message: str) -> str:
    start = message.find(BOUNDARY_START)
    end = message.rfind(BOUNDARY_END)
    if start < 0 or end < start:
        return message
    inside = message[start + len(BOUNDARY_START) : end].strip("\n")
    _, sep, content = inside.partition("\n---\n")
    return content if sep else inside


class LocalGateway:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Group commit, as the main store has: many agent runs share one transaction.
        self._db = LogWriter(path, _SCHEMA)
        self._open = False

    async def start(self) -> None:
        if not self._open:
            await self._db.open()
            self._open = True
            await self._db.run(_add_options_column)

    async def close(self) -> None:
        if self._open:
            await self._db.close()
            self._open = False

    @property
    def ready(self) -> bool:
        """Always, once started: it is a file beside the store (``/readyz`` reads this)."""
        return self._open

    def messages(self) -> list[dict[str, Any]]:
        """Everything logged so far, oldest first (``clawdbot_webhooks.testing`` reads this)."""
        return read_path(self.path)

    async def probe(self) -> str:
        return f"local gateway (message log {self.path})"

    def _write(self, fn: Callable[[sqlite3.Connection], Any], rows: int = 1) -> Awaitable[Any]:
        """``fn(connection)`` committed: the log's future itself once it is open (no
        coroutine per write). ``rows``: what it counts as toward a checkpoint (``rows_for``)."""
        if self._open:
            return self._db.run(fn, rows)
        return self._start_then(fn, rows)

    async def _start_then(self, fn: Callable[[sqlite3.Connection], Any], rows: int) -> Any:
        await self.start()
        return await self._db.run(fn, rows)

    async def send_message(
        self, *, channel: str, peer: str, text: str, session: str, idempotency_key: str
    ) -> Mapping[str, Any]:
        def op(conn: sqlite3.Connection) -> Mapping[str, Any]:
            # Sent once per key: a repeat finds the first one (one statement when new; the
            # new row's number is ``lastrowid``, cheaper than RETURNING: bench/README.md).
            cursor = conn.execute(
                "INSERT INTO messages (at, kind, session, channel, peer, text, "
                "idempotency_key) VALUES (?, 'sent', ?, ?, ?, ?, ?) "
                "ON CONFLICT (idempotency_key, kind) WHERE idempotency_key IS NOT NULL "
                "DO NOTHING",
                (time.time(), session, channel, peer, text, idempotency_key),
            )
            n = cursor.lastrowid
            if cursor.rowcount != 1:  # a repeat: nothing inserted, ``lastrowid`` is stale
                (n,) = conn.execute(
                    "SELECT n FROM messages WHERE idempotency_key=? AND kind='sent'",
                    (idempotency_key,),
                ).fetchone()
            return {"messageId": f"local-{n}", "channel": channel, "to": peer}

        result: Mapping[str, Any] = await self._write(op, rows_for(len(text)))
        return result

    async def run_agent(
        self,
        *,
        agent_id: str,
        message: str,
        session: str,
        idempotency_key: str,
        deliver: ReplyTarget | None = None,
        thinking: str | None = None,
        timeout: int | None = None,
        label: str | None = None,
        instructions: str | None = None,
    ) -> AgentReply:
        if instructions:
            # No system prompt here: the operator's words come first in the prompt, as a
            # gateway without a system-prompt channel sends them.
            message = f"{instructions}\n\n{message}"
        recorded = run_options(deliver=deliver, thinking=thinking, timeout=timeout, label=label)

        def op(conn: sqlite3.Connection) -> AgentReply | str:
            row = conn.execute(
                "SELECT text FROM messages WHERE idempotency_key=? AND kind='reply'",
                (idempotency_key,),
            ).fetchone()
            if row is not None:
                reply = row[0]
            else:
                turn = (
                    1
                    + conn.execute(
                        "SELECT COUNT(*) FROM messages WHERE session=? AND kind='prompt'",
                        (session,),
                    ).fetchone()[0]
                )
                reply = echo_reply(agent_id, message, turn)
                now = time.time()
                conn.executemany(
                    "INSERT INTO messages (at, kind, session, agent_id, text, idempotency_key, "
                    "run_id, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            now,
                            "prompt",
                            session,
                            agent_id,
                            message,
                            idempotency_key,
                            idempotency_key,
                            recorded,
                        ),
                        (
                            now,
                            "reply",
                            session,
                            agent_id,
                            reply,
                            idempotency_key,
                            idempotency_key,
                            None,
                        ),
                    ],
                )
            if deliver is not None:
                # As on Clawdbot: the run is kept when its reply cannot be delivered, and a
                # retry with the same key delivers the same reply without running again.
                failure = _deliver(conn, deliver, session, reply, idempotency_key)
                if failure is not None:
                    return failure
            return AgentReply(reply, idempotency_key, agent_id)

        # The prompt, the echo of it, and that again when delivered.
        rows = rows_for(len(message)) * (2 + bool(deliver))
        answer: AgentReply | str = await self._write(op, rows)
        if isinstance(answer, str):
            raise GatewayError(answer, retry=False)
        return answer

    async def wake(self, text: str, mode: str = "now") -> Mapping[str, Any]:
        """Log the system event Clawdbot would queue for its main session."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO messages (at, kind, session, text, options) "
                "VALUES (?, 'wake', 'main', ?, ?)",
                (time.time(), text, json.dumps({"mode": mode})),
            )

        await self._write(op, rows_for(len(text)))
        return {"ok": True, "mode": mode}


def run_options(
    *,
    deliver: ReplyTarget | None,
    thinking: str | None,
    timeout: int | None,
    label: str | None,
) -> str | None:
    """A run's options as the log records them (JSON, the config's names), or None."""
    options: dict[str, Any] = {}
    if deliver is not None:
        options["deliver"] = {
            key: value
            for key, value in (
                ("channel", deliver.channel),
                ("to", deliver.to),
                ("threadId", deliver.thread_id),
                ("accountId", deliver.account_id),
            )
            if value is not None
        }
    for key, value in (("thinking", thinking), ("timeout", timeout), ("label", label)):
        if value is not None:
            options[key] = value
    return json.dumps(options, ensure_ascii=False) if options else None


def _deliver(
    conn: sqlite3.Connection, target: ReplyTarget, session: str, reply: str, key: str
) -> str | None:
    """Log the reply as sent to ``target``; the reason it cannot be, or None."""
    if conn.execute(
        "SELECT 1 FROM messages WHERE idempotency_key=? AND kind='sent'", (key,)
    ).fetchone():
        return None
    channel, peer = target.channel, target.to
    if channel == "last":
        # The chat this session last sent to, as Clawdbot remembers a session's last route.
        last = conn.execute(
            "SELECT channel, peer FROM messages WHERE session=? AND kind='sent' "
            "ORDER BY n DESC LIMIT 1",
            (session,),
        ).fetchone()
        if last is None:
            return f"no chat to deliver the reply to: session {session!r} has none yet ('last')"
        channel, peer = last[0], peer or last[1]
    if not peer:
        return f"no chat to deliver the reply to on channel {channel!r}: 'to' is missing"
    conn.execute(
        "INSERT INTO messages (at, kind, session, channel, peer, text, idempotency_key, "
        "options) VALUES (?, 'sent', ?, ?, ?, ?, ?, ?)",
        (time.time(), session, channel, peer, reply, key, _thread_options(target)),
    )
    return None


def _thread_options(target: ReplyTarget) -> str | None:
    extra = {
        key: value
        for key, value in (("threadId", target.thread_id), ("accountId", target.account_id))
        if value is not None
    }
    return json.dumps(extra, ensure_ascii=False) if extra else None


def _add_options_column(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "options" not in columns:
        conn.execute(_ADD_OPTIONS)


def create(options: Mapping[str, Any], env: GatewayEnv) -> LocalGateway:
    return LocalGateway(Path(env.state_dir) / LOG_FILE)


@hookimpl
def register_gateways(register: Callable[[str, Any], None]) -> None:
    register("local", create)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(messages)


__all__ = ["LOG_FILE", "LocalGateway", "create", "echo_reply", "read_log", "run_options"]

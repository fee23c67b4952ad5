"""The storage-unavailable contract with real faults: PostgreSQL refusing connections,
PostgreSQL hung behind a proxy that stops forwarding, SQLite on a full filesystem, SQLite
locked from outside. Each: 503 JSON with Retry-After within ``incoming.storeTimeout``,
``/readyz`` 503 within it too, recovery without a restart, no acknowledged delivery lost.

The elapsed-time bounds below are the contract under test (a sender gives up after 10 s),
with room for a loaded machine; they are far from the 10-35 s stalls they guard against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clawdbot_webhooks.testing import Served
from tests.conftest import POSTGRES_URL, require_postgres

#: The deadline the tests configure, and the slack a loaded machine may need on top of it.
STORE_TIMEOUT = 1.0
SLACK = 3.0
REFUSED = "storage unavailable; nothing was accepted"
NO_ANSWER = "storage did not answer within 1s; nothing was accepted"

BACKENDS = ["sqlite"]  # each test picks its own storage


def config(storage: dict[str, Any] | None = None) -> dict[str, Any]:
    webhooks: dict[str, Any] = {
        "incoming": {"storeTimeout": STORE_TIMEOUT},
        "handlers": [
            {
                "id": "h",
                "action": "send_message",
                "target": {"channel": "local", "peer": "me"},
                "template": "n={{ n }}",
            }
        ],
    }
    # Short leases: a delivery whose commit landed after its 503 is taken over quickly.
    webhooks["storage"] = {"leaseSeconds": 1, **(storage or {})}
    return webhooks


#: Bodies stored apart from their row (the writer thread stores them) and in it (committed
#: on the event loop's thread while the writer thread is idle, else by the writer thread).
PADS = pytest.mark.parametrize("pad", [4096, 100], ids=["body-apart", "body-inline"])


async def post(
    srv: Served, n: int, headers: dict[str, str] | None = None, pad: int = 4096
) -> tuple[int, Any, Any]:
    """POST ``{"n": n}``; (status, JSON body, headers), answered within the deadline."""
    started = time.monotonic()
    async with srv.session.post(
        f"{srv.base}/webhook/h", json={"n": n, "pad": "x" * pad}, headers=headers
    ) as resp:
        body = await resp.json()
    assert time.monotonic() - started < STORE_TIMEOUT + SLACK
    return resp.status, body, resp.headers


async def readyz(srv: Served) -> tuple[int, Any]:
    started = time.monotonic()
    async with srv.session.get(f"{srv.base}/readyz") as resp:
        body = await resp.json()
    assert time.monotonic() - started < STORE_TIMEOUT + SLACK
    return resp.status, body


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.2)


async def outage(
    srv: Served,
    break_store: Callable[[], Awaitable[None]],
    heal_store: Callable[[], Awaitable[None]],
    refusal: str,
    pad: int = 4096,
) -> None:
    """The scenario every fault goes through."""
    acked: list[str] = []
    status, body, _ = await post(srv, 1, pad=pad)
    assert status == 202
    acked.append(body["id"])
    assert (await readyz(srv))[0] == 200

    await break_store()
    status, body, headers = await post(srv, 2, pad=pad)
    assert (status, body) == (503, {"ok": False, "error": refusal})
    assert headers["Retry-After"] == "5"
    status, ready = await readyz(srv)
    assert status == 503 and ready["ok"] is False
    assert ready["checks"]["store"].startswith("unavailable: ")
    status, body, _ = await post(srv, 3, pad=pad)
    assert (status, body["error"]) == (503, refusal)

    await heal_store()

    async def ready_again() -> bool:
        return (await readyz(srv))[0] == 200

    await eventually(ready_again)
    status, body, _ = await post(srv, 4, pad=pad)
    assert status == 202
    acked.append(body["id"])

    async def all_done() -> bool:
        records = [await srv.runtime.store.get_incoming(i) for i in acked]
        return all(r is not None and r.status == "done" for r in records)

    await eventually(all_done)
    sent = [m["text"] for m in srv.messages() if m["kind"] == "sent"]
    # Each acknowledged delivery ran exactly once; a refused one at most once (its commit
    # may have landed after the 503).
    assert sent.count("n=1") == 1 and sent.count("n=4") == 1
    assert sent.count("n=2") <= 1 and sent.count("n=3") <= 1


# ---------------------------------------------------------------------- SQLite


@PADS
async def test_sqlite_locked_from_outside(start_server, caplog, pad: int) -> None:
    caplog.set_level(logging.WARNING, logger="clawdbot_webhooks.storage")
    srv = await start_server(config())
    path = srv.runtime.settings.storage.url[len("sqlite:///") :]
    outside = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)

    async def lock() -> None:
        await asyncio.to_thread(outside.execute, "BEGIN EXCLUSIVE")

    async def unlock() -> None:
        await asyncio.to_thread(outside.execute, "ROLLBACK")

    try:
        await outage(srv, lock, unlock, NO_ANSWER, pad)
    finally:
        outside.close()
    # The webhook endpoint's lines (a poller held up by the lock for long says so its own way).
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "clawdbot_webhooks.storage" and r.getMessage().startswith("storage ")
    ]
    assert lines[0] == (
        "storage unavailable: no answer within 1s; webhooks are answered 503 until a write succeeds"
    )
    assert lines[1].startswith("storage available again after ")
    assert lines[1].endswith("s; 2 deliveries were answered 503 meanwhile")
    assert len(lines) == 2  # once per outage, not once per request


async def test_a_retry_of_a_delivery_stored_after_its_503_is_a_duplicate(start_server) -> None:
    srv = await start_server(config())
    path = srv.runtime.settings.storage.url[len("sqlite:///") :]
    outside = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    await asyncio.to_thread(outside.execute, "BEGIN EXCLUSIVE")
    try:
        status, body, _ = await post(srv, 7, {"X-GitHub-Delivery": "gh-7"})
        assert (status, body["error"]) == (503, NO_ANSWER)
    finally:
        # Released well inside the writer's own wait: the insert queued behind the lock
        # commits now, after its sender was told 503.
        await asyncio.to_thread(outside.execute, "ROLLBACK")
        outside.close()

    async def stored() -> bool:
        return bool(await srv.runtime.store.find_duplicate("h", "gh-7"))

    await eventually(stored)
    original = await srv.runtime.store.find_duplicate("h", "gh-7")
    status, body, _ = await post(srv, 7, {"X-GitHub-Delivery": "gh-7"})
    assert (status, body) == (200, {"ok": True, "duplicate": True, "id": original})

    async def ran() -> bool:
        record = await srv.runtime.store.get_incoming(str(original))
        return record is not None and record.status == "done"

    await eventually(ran)
    await srv.idle()
    assert [m["text"] for m in srv.messages() if m["kind"] == "sent"] == ["n=7"]


@contextlib.contextmanager
def small_filesystem(where: Path) -> Any:
    """A 4 MB tmpfs at ``where``, mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the full-disk test must run)")
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem holding ``directory`` is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:  # the last few bytes
                out.write(b"\0")
    return filler


@PADS
async def test_sqlite_on_a_full_filesystem(start_server, tmp_path: Path, pad: int) -> None:
    with small_filesystem(tmp_path / "small") as small:
        srv = await start_server(config({"url": f"sqlite:///{small / 'webhooks.sqlite3'}"}))
        filler: list[Path] = []

        async def full() -> None:
            filler.append(await asyncio.to_thread(fill, small))

        async def space() -> None:
            filler.pop().unlink()

        await outage(srv, full, space, REFUSED, pad)


# ---------------------------------------------------------------------- PostgreSQL


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[tuple[str, Any]]:
    """A database of the test's own (so it can be closed to connections), its URL and an
    admin connection to the default one."""
    require_postgres()
    import asyncpg

    name = f"cw_fault_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, admin
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=$1", name
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def url_for(database: str, port: int | None = None) -> str:
    base, _, _ = POSTGRES_URL.rpartition("/")
    if port is not None:
        base = base.rsplit(":", 1)[0] + f":{port}"
    return f"{base}/{database}"


async def test_postgres_refusing_connections(start_server) -> None:
    async with database() as (name, admin):
        srv = await start_server(config({"url": url_for(name)}))

        async def refuse() -> None:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=$1", name
            )

        async def allow() -> None:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        await outage(srv, refuse, allow, REFUSED)


class PausingProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding (a hung server or network: the
    connections stay open, nothing comes back) and start again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await source.read(65536)
                if not data:
                    break
                await self.flowing.wait()  # read while flowing, held once stopped
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    async def close(self) -> None:
        self.flowing.set()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_postgres_hung(start_server) -> None:
    async with database() as (name, _):
        host_port = POSTGRES_URL.rpartition("@")[2].partition("/")[0]
        host, _, port = host_port.partition(":")
        proxy = PausingProxy(host, int(port or 5432))
        proxy_port = await proxy.start()
        try:
            srv = await start_server(config({"url": url_for(name, proxy_port)}))

            async def hang() -> None:
                proxy.flowing.clear()

            async def resume() -> None:
                proxy.flowing.set()

            await outage(srv, hang, resume, NO_ANSWER)
            await srv.server.close()  # before the proxy its connections go through
        finally:
            await proxy.close()


async def test_readyz_is_503_after_a_failed_write_until_a_write_succeeds(
    start_server, tmp_path: Path
) -> None:
    """Reads still work on a full disk: readiness follows the writes."""
    with small_filesystem(tmp_path / "small") as small:
        srv = await start_server(config({"url": f"sqlite:///{small / 'webhooks.sqlite3'}"}))
        filler = await asyncio.to_thread(fill, small)
        assert await srv.runtime.store.count_incoming() == 0  # reads work
        status, body, _ = await post(srv, 1)
        assert (status, body["error"]) == (503, REFUSED)
        status, ready = await readyz(srv)
        assert status == 503
        assert ready["checks"]["store"].startswith("unavailable: StoreUnavailable: ")
        assert (await readyz(srv))[0] == 503  # still: no write has succeeded
        filler.unlink()
        status, ready = await readyz(srv)  # the probe write succeeds
        assert (status, ready["checks"]["store"]) == (200, "ok")


#: Where the pollers and the outages they meet are logged (the maintenance loops, which try
#: the store now and then, not every second, are not the subject here).
POLLER_LOGGERS = {
    "clawdbot_webhooks.storage",
    "clawdbot_webhooks.pipeline",
    "clawdbot_webhooks.outgoing.outbox",
}


async def test_the_pollers_log_a_storage_outage_when_it_starts_and_when_it_ends(
    start_server, caplog
) -> None:
    """The inbox and outbox pollers try the store every second: an outage is two lines each
    (its start, and its end with how many reads failed), not a traceback a second."""
    caplog.set_level(logging.INFO)
    async with database() as (name, _):
        host_port = POSTGRES_URL.rpartition("@")[2].partition("/")[0]
        host, _, port = host_port.partition(":")
        proxy = PausingProxy(host, int(port or 5432))
        proxy_port = await proxy.start()
        srv = await start_server(config({"url": url_for(name, proxy_port)}))
        inbox = srv.runtime.pipeline.inbox_outage
        outbox = srv.runtime.outbox.outbox_outage
        # The database's address stops answering: its connections are cut, new ones refused.
        await proxy.close()

        async def failed_three_times() -> bool:
            return inbox.refused >= 3 and outbox.refused >= 3

        await eventually(failed_three_times)
        inbox_failed, outbox_failed = inbox.refused, outbox.refused
        proxy = PausingProxy(host, int(port or 5432))
        await proxy.start(proxy_port)
        try:

            async def read_again() -> bool:
                return not inbox.down and not outbox.down

            await eventually(read_again)
            await srv.server.close()  # before the proxy its connections go through
        finally:
            await proxy.close()
    lines = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name in POLLER_LOGGERS and r.levelno >= logging.INFO
    ]
    assert len(lines) == 4, lines
    assert sorted(level for level, _ in lines) == ["ERROR", "ERROR", "WARNING", "WARNING"]
    for table, failed in (("inbox", inbox_failed), ("outbox", outbox_failed)):
        started = [m for _, m in lines if m.startswith(f"could not read the {table}: ")]
        assert len(started) == 1 and started[0].endswith("; trying again every second")
        [ended] = [m for _, m in lines if m.startswith(f"the {table} can be read again after ")]
        # The reads counted when the database came back, and any that failed before the
        # first one got through.
        assert int(ended.split("s; ")[1].split()[0]) >= failed
        assert ended.endswith(" reads failed meanwhile")
    assert not any(r.exc_info for r in caplog.records if r.name in POLLER_LOGGERS)

"""Shared fixtures: real servers on loopback, real SQLite files, real HTTP sinks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from clawdbot_webhooks_hookspecs import hookimpl
from multidict import CIMultiDict

from clawdbot_webhooks.eventloop import loop_factory
from clawdbot_webhooks.store import (
    IncomingRecord,
    OutgoingRecord,
    SchemaStatus,
    open_store,
    redact_url,
)
from clawdbot_webhooks.testing import Served, serve

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "data" / "signatures.json"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on the loop ``serve`` runs on (uvloop where installed); the crash
    tests run ``serve`` on asyncio's own loop as well."""
    return {"serve-loop": loop_factory("auto")}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def incoming_record(key: str, received_at: float, session: str = "hook:x") -> IncomingRecord:
    """A delivery to hook ``h`` whose dedup key is ``key``, for tests of a store alone."""
    return IncomingRecord(
        id=f"dlv_{key}_{received_at}",
        hook_id="h",
        received_at=received_at,
        content_type="application/json",
        body=b"{}",
        headers={},
        query={},
        client_ip="127.0.0.1",
        session=session,
        dedup_key=key,
    )


def outgoing_record(n: int, session: str | None = "s") -> OutgoingRecord:
    """Outgoing row ``out_<n>`` of subscription ``sub``, for tests of a store alone."""
    return OutgoingRecord(
        id=f"out_{n}",
        event_id=f"evt_{n}",
        subscription_id="sub",
        event_type="message_received",
        session=session,
        payload=b"{}",
        created_at=time.time(),
    )


def write_config(path: Path, webhooks: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"webhooks": webhooks}, ensure_ascii=False, indent=2))
    return path


#: The server the ``start_server`` fixture yields: ``clawdbot_webhooks.testing.Served``.
Running = Served

# ---------------------------------------------------------------------- storage backends
#
# The behavioural modules below run against both backends: ``start_server`` and
# ``server_process`` put their config's storage on SQLite (the default) or on PostgreSQL (a
# schema of its own per test, dropped afterwards). Without a reachable PostgreSQL the
# postgres cases skip with the reason, except under CI=true, where they fail.

POSTGRES_URL = os.environ.get("CW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BOTH_BACKENDS = {
    "test_actions",
    "test_outgoing",
    "test_crash",
    "test_incoming_http",
    "test_replay",
    "test_dlq_cli",
    "test_scale_out",
    "test_storage",
    "test_backlog",
}
#: Leases in PostgreSQL tests: short, so work a killed process held is taken over quickly.
TEST_LEASE_SECONDS = 3.0
_RUN = uuid.uuid4().hex[:8]
_schemas = itertools.count()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "storage_backend" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends is None:
        backends = ["sqlite", "postgres"] if module in BOTH_BACKENDS else ["sqlite"]
    metafunc.parametrize("storage_backend", backends, indirect=True)


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await conn.close()

    try:
        in_thread(probe)
    except Exception as exc:
        return f"PostgreSQL at {redact_url(POSTGRES_URL)} is unreachable: {exc!r}"
    return None


def in_thread(fn: Callable[[], Any]) -> Any:
    """``asyncio.run(fn())`` in a thread of its own, out of the way of a test's event loop."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(fn()))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    if failure:
        raise failure[0]
    return result[0] if result else None


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem} (CI=true: the PostgreSQL tests must run)")
    pytest.skip(problem)


def drop_schema(schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    in_thread(drop)


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def storage(storage_backend: str) -> Iterator[dict[str, Any] | None]:
    """The ``storage`` section for this test's backend (None: the SQLite default)."""
    if storage_backend == "sqlite":
        yield None
        return
    require_postgres()
    schema = f"cw_test_{_RUN}_{next(_schemas)}"
    yield {"url": POSTGRES_URL, "schema": schema, "leaseSeconds": TEST_LEASE_SECONDS}
    drop_schema(schema)


def with_storage(webhooks: dict[str, Any], storage: dict[str, Any] | None) -> dict[str, Any]:
    if storage is None or "storage" in webhooks:
        return webhooks
    return {**webhooks, "storage": storage}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def start_server(
    state_dir: Path, storage: dict[str, Any] | None
) -> AsyncIterator[Callable[..., Any]]:
    """``await start_server(webhooks_dict, plugins=[(name, module)], host=...)``: the runtime's
    own test helper (``clawdbot_webhooks.testing.serve``), stopped when the test ends. The
    storage is this test's backend unless ``webhooks`` names one."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            webhooks: dict[str, Any],
            plugins: Sequence[tuple[str, object]] = (),
            host: str = "127.0.0.1",
            port: int = 0,
        ) -> Served:
            return await stack.enter_async_context(
                serve(
                    with_storage(webhooks, storage),
                    plugins,
                    state_dir=state_dir,
                    host=host,
                    port=port,
                )
            )

        yield start


@dataclass
class Sink:
    """A real HTTP receiver that records what it gets and answers as it is told."""

    received: list[dict[str, Any]] = field(default_factory=list)
    #: status codes to answer, one per request, then ``default``
    script: list[int] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    #: answer nothing until the test ends (an endpoint that hangs)
    hang: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(
            {
                "headers": CIMultiDict(request.headers),
                "body": body,
                "path": request.path,
                "at": time.time(),
            }
        )
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hang:
            await self.released.wait()
        status = self.script.pop(0) if self.script else self.default
        return web.Response(
            status=status, text="ok" if status < 400 else "nope", headers=self.headers
        )

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"sink got {len(self.received)} of {count} requests")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=0.1)

    def json_bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.received]


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    sinks: list[Sink] = []

    async def make(**kwargs: Any) -> Sink:
        sink = Sink(**kwargs)
        sinks.append(sink)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", sink.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sink.port = runner.addresses[0][1]
        runners.append(runner)
        return sink

    yield make
    for sink in sinks:
        sink.released.set()
    for runner in runners:
        await runner.cleanup()


@dataclass
class ServerProcess:
    """``clawdbot-webhooks serve`` in a child process, for crash and restart tests."""

    config: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    loop: str = "auto"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start ``serve`` and return once it has said it listens: its start-up lines, logged
        once the port accepts connections, are in the log (a test may read them next). The
        processes of a test share one log, so the line looked for names this one's port."""
        assert self.log is not None
        written = self.log.stat().st_size if self.log.exists() else 0
        listening = f"webhooks listener on http://127.0.0.1:{self.port}: ".encode()
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clawdbot_webhooks",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                "--loop",
                self.loop,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            with self.log.open("rb") as log:
                log.seek(written)
                if listening in log.read():
                    return
            time.sleep(0.02)
        raise AssertionError(
            f"server did not say it listens within {timeout:g}s (no 'webhooks listener on' "
            f"line in {self.log}; it is logged at INFO)"
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def store_counts(self) -> dict[str, dict[str, int]]:
        """Rows by status per table of this server's store, read without the server:
        ``{"inbox": {"done": 3, ...}, "outbox": {...}, "attempts": {"all": n}}``."""
        status: SchemaStatus = in_thread(self._status)
        return status.counts

    async def _status(self) -> SchemaStatus:
        raw = json.loads(self.config.read_text())["webhooks"]
        storage = raw.get("storage") or {}
        url = storage.get("url") or f"sqlite:///{Path(raw['stateDir']) / 'webhooks.sqlite3'}"
        store = open_store(url, schema=storage.get("schema"), pool_size=1, migrate=False)
        await store.open()
        try:
            return await store.schema_status()
        finally:
            await store.close()


@pytest.fixture
def server_process(
    tmp_path: Path, storage: dict[str, Any] | None
) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process(webhooks, env=None, loop="auto")``: a ``serve`` child process (not
    started) whose storage is this test's backend; every one made in a test shares that
    store."""
    made: list[ServerProcess] = []

    def make(
        webhooks: dict[str, Any], env: dict[str, str] | None = None, loop: str = "auto"
    ) -> ServerProcess:
        webhooks = with_storage({"stateDir": str(tmp_path / "state"), **webhooks}, storage)
        config = write_config(tmp_path / f"config{len(made)}.json5", webhooks)
        full_env = {**os.environ, "PYTHONPATH": str(tmp_path), **(env or {})}
        process = ServerProcess(
            config, free_port(), full_env, log=tmp_path / "server.log", loop=loop
        )
        made.append(process)
        return process

    yield make
    for process in made:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


class EventRecorder:
    """An inline plugin that records every event on the bus."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    @hookimpl
    def on_event(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]


@pytest.fixture
def recorder() -> EventRecorder:
    return EventRecorder()


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a plugin the way pip would: a module plus a ``.dist-info`` with an entry point
    in the ``clawdbot_webhooks`` group, on ``sys.path`` for this test only."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(site))

    def install(
        dist: str, version: str, module: str, source: str, entry: str | None = None
    ) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[clawdbot_webhooks]\n{entry or dist} = {module}\n")
        (info / "top_level.txt").write_text(f"{module}\n")
        sys.modules.pop(module, None)
        return site

    return install

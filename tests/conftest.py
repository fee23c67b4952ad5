"""Shared fixtures: real servers on loopback, real SQLite files, real HTTP sinks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from clawdbot_webhooks_hookspecs import hookimpl
from multidict import CIMultiDict

from clawdbot_webhooks.testing import Served, serve

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors" / "signatures.json"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_config(path: Path, webhooks: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"webhooks": webhooks}, ensure_ascii=False, indent=2))
    return path


#: The server the ``start_server`` fixture yields: ``clawdbot_webhooks.testing.Served``.
Running = Served


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def start_server(state_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await start_server(webhooks_dict, plugins=[(name, module)], host=...)``: the runtime's
    own test helper (``clawdbot_webhooks.testing.serve``), stopped when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            webhooks: dict[str, Any],
            plugins: Sequence[tuple[str, object]] = (),
            host: str = "127.0.0.1",
            port: int = 0,
        ) -> Served:
            return await stack.enter_async_context(
                serve(webhooks, plugins, state_dir=state_dir, host=host, port=port)
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
    headers: dict[str, str] = field(default_factory=dict)
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

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

    async def make(**kwargs: Any) -> Sink:
        sink = Sink(**kwargs)
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

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.log is not None
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
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start in time")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    made: list[ServerProcess] = []

    def make(webhooks: dict[str, Any], env: dict[str, str] | None = None) -> ServerProcess:
        webhooks = {"stateDir": str(tmp_path / "state"), **webhooks}
        config = write_config(tmp_path / f"config{len(made)}.json5", webhooks)
        full_env = {**os.environ, "PYTHONPATH": str(tmp_path), **(env or {})}
        process = ServerProcess(config, free_port(), full_env, log=tmp_path / "server.log")
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

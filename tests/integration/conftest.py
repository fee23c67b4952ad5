"""Fixtures for tests against a real Clawdbot gateway.

The gateway starts once per session (a few seconds) with a streaming model stub and the
event-bridge plugin loaded; tests that kill a gateway start their own. Without an install
(no npm, no pip) the tests skip and say why — except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clawdbot_process import (
    INGRESS_TOKEN,
    ClawdbotProcess,
    bridge_plugins,
    ensure_install,
    free_port,
)
from model_stub import ModelStub

from clawdbot_webhooks.builtin.clawdbot.client import GatewayClient


def wait_ready(gateway: ClawdbotProcess, timeout: float = 60.0) -> None:
    """Until a real handshake succeeds (the port opens a little before the gateway answers)."""

    async def attempt() -> None:
        await GatewayClient(gateway.url, gateway.token).probe()

    deadline = time.monotonic() + timeout
    while True:
        try:
            # A thread of its own: this may be called from inside a test's running loop.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(lambda: asyncio.run(attempt())).result()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready: {exc}\n{gateway.tail()}") from exc
            time.sleep(0.2)


@pytest.fixture(scope="session")
def clawdbot_install() -> tuple[str, str]:
    try:
        return ensure_install()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        reason = f"no real Clawdbot to test against: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def model_stub() -> Iterator[ModelStub]:
    stub = ModelStub()
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture(scope="session")
def ingress_port() -> int:
    """Where the bridge plugin in the shared gateway sends its events (our server's port)."""
    return free_port()


@pytest.fixture(scope="session")
def clawdbot(
    clawdbot_install: tuple[str, str],
    model_stub: ModelStub,
    tmp_path_factory: pytest.TempPathFactory,
    ingress_port: int,
) -> Iterator[ClawdbotProcess]:
    node, entry = clawdbot_install
    gateway = ClawdbotProcess(
        node,
        entry,
        tmp_path_factory.mktemp("clawdbot"),
        model_stub.base_url,
        plugins=bridge_plugins(f"http://127.0.0.1:{ingress_port}/events/ingest", INGRESS_TOKEN),
    )
    try:
        gateway.start()
        wait_ready(gateway)
    except Exception:
        gateway.stop()
        raise
    yield gateway
    gateway.stop()


@pytest.fixture
def make_clawdbot(
    clawdbot_install: tuple[str, str], model_stub: ModelStub, tmp_path: Path
) -> Iterator[Callable[[], ClawdbotProcess]]:
    """A gateway of the test's own, for tests that kill it."""
    made: list[ClawdbotProcess] = []

    def make() -> ClawdbotProcess:
        node, entry = clawdbot_install
        gateway = ClawdbotProcess(
            node, entry, tmp_path / f"clawdbot{len(made)}", model_stub.base_url
        )
        gateway.scratch.mkdir(parents=True)
        made.append(gateway)
        gateway.start()
        wait_ready(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.stop()

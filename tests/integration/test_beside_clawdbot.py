"""Installed for real beside a Clawdbot: a scratch ``HOME`` holding Clawdbot's own
``clawdbot.json``; ``init`` writes ``~/.clawdbot/webhooks.json5``; ``check --probe`` and
``serve``, given no ``--config`` and no gateway URL or token, reach the gateway; a webhook's
``run_agent`` reply goes out to a subscriber; Clawdbot's file is left byte for byte and the
gateway still starts with it; ``init --bridge`` installs the event bridge through Clawdbot's
own CLI and a ``chat.send`` message reaches our subscriber."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import json5
import pytest
from clawdbot_process import ClawdbotProcess, free_port
from conftest import wait_ready
from model_stub import ModelStub

from clawdbot_webhooks.builtin.clawdbot.client import GatewayClient

pytestmark = pytest.mark.slow

BRIDGE = "clawdbot-event-bridge"


class Beside:
    """Our CLI run as a user would: the scratch HOME, nothing else pointing anywhere."""

    def __init__(self, gateway: ClawdbotProcess, cli: str) -> None:
        self.gateway = gateway
        self.home = gateway.scratch / "home"
        self.cli = cli
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLAWDBOT_", "OPENCLAW_")) or k == "CLAWDBOT_WEBHOOKS_CACHE"
        }
        self.env.update(
            HOME=str(self.home),
            CLAWDBOT_NO_RESPAWN="1",
            CLAWDBOT_SKIP_CHANNELS="1",
            NO_COLOR="1",
        )
        self.ours = self.home / ".clawdbot" / "webhooks.json5"
        self.theirs = self.home / ".clawdbot" / "clawdbot.json"
        self.serving: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clawdbot_webhooks", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env=self.env,
            cwd=str(self.gateway.scratch),
        )

    def config(self) -> dict[str, Any]:
        return dict(json5.loads(self.ours.read_text())["webhooks"])

    def edit(self, **changes: Any) -> None:
        webhooks = self.config()
        webhooks.update(changes)
        self.ours.write_text(json.dumps({"webhooks": webhooks}, indent=2))

    def serve(self) -> None:
        log = (self.gateway.scratch / "serve.log").open("ab")
        self.serving = subprocess.Popen(
            [sys.executable, "-m", "clawdbot_webhooks", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(self.gateway.scratch),
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.serving.poll() is None, self.log()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"serve did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.serving is not None and self.serving.poll() is None:
            self.serving.terminate()
            self.serving.wait(30)

    def log(self) -> str:
        return (self.gateway.scratch / "serve.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def beside(
    clawdbot_install: tuple[str, str], model_stub: ModelStub, tmp_path: Path
) -> Iterator[Beside]:
    node, entry = clawdbot_install
    # Plugins on, as Clawdbot ships (the bridge is installed later, by init --bridge).
    gateway = ClawdbotProcess(node, entry, tmp_path, model_stub.base_url, plugins={"enabled": True})
    gateway.start()
    wait_ready(gateway)
    made = Beside(gateway, f"{node} {entry}")
    yield made
    made.stop()
    gateway.stop()


async def _received(sink: Any, wanted: Any, timeout: float = 90) -> dict[str, Any]:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for body in sink.json_bodies():
            if wanted(body):
                return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing wanted arrived: {sink.json_bodies()}")


async def test_init_check_serve_and_the_bridge_beside_a_real_clawdbot(
    beside: Beside, make_sink: Any
) -> None:
    gateway = beside.gateway
    theirs_before = beside.theirs.read_bytes()

    made = beside.run("init", "--port", str(beside.port))
    assert made.returncode == 0, made.stderr
    assert f"Wrote {beside.ours}" in made.stdout
    assert f"gateway: clawdbot (URL and token read from {beside.theirs}" in made.stdout
    assert gateway.token not in made.stdout + made.stderr
    assert beside.config()["gateway"] == {"type": "clawdbot"}
    refused = beside.run("init")
    assert refused.returncode == 1 and "not overwritten" in refused.stderr

    probe = beside.run("check", "--probe")
    assert probe.returncode == 0, probe.stderr
    assert f"Config OK: {beside.ours}" in probe.stdout
    assert f"Gateway OK: Clawdbot gateway at ws://127.0.0.1:{gateway.port}" in probe.stdout
    assert f"url from {beside.theirs} gateway.bind, {beside.theirs} gateway.port" in probe.stdout
    assert f"token from {beside.theirs} gateway.auth.token" in probe.stdout

    # The starter's own handler, its reply sent to a subscriber of ours.
    sink = await make_sink()
    beside.edit(outgoing=[{"id": "out", "url": sink.url, "events": ["agent_response"]}])
    secret = beside.config()["incoming"]["secret"]
    beside.serve()
    m = f"m{uuid.uuid4().hex[:10]}"
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"http://127.0.0.1:{beside.port}/webhook/hello",
            json={"text": m},
            headers={"X-Webhook-Secret": secret},
        ) as resp,
    ):
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()
    reply = await _received(sink, lambda b: b.get("session") == accepted["session"])
    assert reply["type"] == "agent_response"
    assert reply["response"]["text"] == f"STUB[1] A webhook arrived: {m}"
    beside.stop()
    assert "gateway clawdbot: url from" in beside.log()

    # Clawdbot's file: untouched, and the gateway starts with it.
    assert beside.theirs.read_bytes() == theirs_before
    gateway.stop()
    gateway.start(write=False)
    wait_ready(gateway)

    # The bridge: installed and configured with Clawdbot's own CLI.
    bridged = beside.run(
        "init", "--force", "--bridge", "--port", str(beside.port), "--clawdbot", beside.cli
    )
    assert bridged.returncode == 0, bridged.stdout + bridged.stderr
    assert "Installed plugin: clawdbot-event-bridge" in bridged.stdout
    token = beside.config()["incoming"]["eventIngress"]["token"]
    theirs = json5.loads(beside.theirs.read_text())
    entry = theirs["plugins"]["entries"][BRIDGE]
    assert entry["enabled"] is True
    assert entry["config"] == {
        "url": f"http://127.0.0.1:{beside.port}/events/ingest",
        "token": token,
    }
    assert (beside.home / ".clawdbot" / "extensions" / BRIDGE / "index.js").is_file()
    beside.edit(outgoing=[{"id": "out", "url": sink.url, "events": ["message_received"]}])
    beside.serve()
    gateway.stop()
    gateway.start(write=False)
    wait_ready(gateway)
    client = GatewayClient(gateway.url, gateway.token)
    await client.start()
    try:
        await client.request(
            "chat.send",
            {"sessionKey": f"agent:main:web-{m}", "message": f"hello {m}", "idempotencyKey": m},
        )
    finally:
        await client.close()
    heard = await _received(
        sink, lambda b: b.get("type") == "message_received" and m in json.dumps(b)
    )
    assert heard["message"]["source"] == "clawdbot-plugin"

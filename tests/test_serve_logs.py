"""What a real ``clawdbot-webhooks serve`` process logs when it starts (each listener, the
gateway, the storage, the plugins; no credential) and when SIGTERM stops it with deliveries
in flight (how many finished while it stopped, how many were left stored)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import POSTGRES_URL, free_port

BACKENDS = ["sqlite", "postgres"]
PUBLIC = {"type": "none"}
ADMIN_TOKEN = "admin-token-start-lines-1"
INGRESS_TOKEN = "ingress-token-start-lines-2"
GATEWAY_TOKEN = "gateway-token-start-lines-3"
GATEWAY_PASSWORD = "gateway-password-start-4"
DB_PASSWORD = "db-password-start-lines-5"
SECRETS = [ADMIN_TOKEN, INGRESS_TOKEN, GATEWAY_TOKEN, GATEWAY_PASSWORD, DB_PASSWORD]

GATED = """
    import asyncio, os, pathlib

    async def gated(ctx):
        # "gate": waits for the file the test makes once the server is stopping; else for
        # one that never comes.
        name = "GATE_FILE" if ctx.delivery.payload.get("gate") else "NEVER_FILE"
        path = pathlib.Path(os.environ[name])
        while not path.exists():
            await asyncio.sleep(0.02)
        return "done"
"""

PLUGIN = """
from clawdbot_webhooks_hookspecs import hookimpl

@hookimpl
def register_template_filters(register):
    register("shout", lambda text: str(text).upper())
"""

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")


def records(log: Path) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every line; each line must be a record of its own."""
    found = []
    for line in log.read_text().splitlines():
        match = LINE.match(line)
        assert match is not None, f"not one record per line: {line!r}"
        found.append((match[1], match[2], match[3]))
    return found


def messages(log: Path, prefix: str) -> list[str]:
    return [m for _, _, m in records(log) if m.startswith(prefix)]


def post(base: str, hook: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{base}/webhook/{hook}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def test_start_lines_name_every_listener_the_gateway_the_storage_and_the_plugins(
    server_process, fake_distribution, tmp_path: Path, storage: dict[str, Any] | None
) -> None:
    site = fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", PLUGIN, "shout")
    admin_port = free_port()
    webhooks: dict[str, Any] = {
        "incoming": {"eventIngress": {"token": INGRESS_TOKEN}},
        "admin": {"enabled": True, "token": ADMIN_TOKEN, "port": admin_port},
        "gateway": {
            "type": "clawdbot",
            # Nothing listens there: the server starts and keeps trying.
            "url": f"ws://gw:{GATEWAY_PASSWORD}@127.0.0.1:9/",
            "token": GATEWAY_TOKEN,
        },
        "handlers": [
            {
                "id": "b-hook",
                "action": "send_message",
                "target": {"channel": "x", "peer": "y"},
                "template": "{{ t | shout }}",
                "verify": PUBLIC,
            },
            {"id": "a-hook", "action": "wake", "template": "x", "verify": PUBLIC},
        ],
    }
    host = POSTGRES_URL.rpartition("@")[2]
    if storage is not None:  # trust authentication: the password is there to be masked
        url = f"postgresql://postgres:{DB_PASSWORD}@{host}"
        webhooks["storage"] = {**storage, "url": url}
    server = server_process(webhooks, env={"PYTHONPATH": f"{site}{os.pathsep}{tmp_path}"})
    server.start()
    assert server.terminate() == 0
    assert server.log is not None
    base = f"http://127.0.0.1:{server.port}"
    assert messages(server.log, "webhooks listener ") == [
        f"webhooks listener on {base}: POST /webhook/<hook-id> "
        "(handlers: a-hook, b-hook; event loop: uvloop)"
    ]
    assert messages(server.log, "admin ") == [
        f"admin listener on http://127.0.0.1:{admin_port}: API /admin/api/, dashboard /admin/"
    ]
    assert messages(server.log, "event ingress ") == [
        f"event ingress on the webhooks listener {base}: POST /events/ingest"
    ]
    assert messages(server.log, "gateway clawdbot at ") == [
        "gateway clawdbot at ws://gw:***@127.0.0.1:9/ (token ***)"
    ]
    state = tmp_path / "state"
    if storage is None:
        expected = f"storage sqlite at {state / 'webhooks.sqlite3'}"
    else:
        expected = (
            f"storage postgresql at postgresql://postgres:***@{host} (schema {storage['schema']})"
        )
    assert messages(server.log, "storage ") == [expected]
    [plugins] = messages(server.log, "plugins loaded: ")
    assert plugins.startswith("plugins loaded: shout 1.2.3; built-in ")
    assert "local-gateway" in plugins and "send-message-action" in plugins
    text = server.log.read_text()
    assert not any(secret in text for secret in SECRETS)


async def test_sigterm_logs_what_finished_while_stopping_and_what_was_left(
    server_process, make_sink, tmp_path: Path
) -> None:
    (tmp_path / "hookfns.py").write_text(textwrap.dedent(GATED))
    gate, never = tmp_path / "gate", tmp_path / "never"
    hanging = await make_sink(hang=True)
    ok = await make_sink()
    server = server_process(
        {
            "incoming": {"concurrency": 3, "shutdownTimeout": 5},
            "handlers": [
                {"id": "slow", "action": "custom", "function": "hookfns:gated", "verify": PUBLIC}
            ],
            "outgoing": [
                # Each delivery's start goes to an endpoint that never answers, its end to
                # one that does.
                {"id": "hangs", "url": hanging.url, "events": ["session_started"]},
                {"id": "answers", "url": ok.url, "events": ["session_ended"]},
            ],
        },
        env={"GATE_FILE": str(gate), "NEVER_FILE": str(never)},
    )
    await asyncio.to_thread(server.start)
    for payload in ({"gate": True}, {"gate": True}, {"gate": False}):
        await asyncio.to_thread(post, server.base, "slow", payload)
    # Every action has started (and is waiting): their session_started rows are being sent.
    await hanging.wait_for(3)
    assert server.proc is not None and server.log is not None
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not messages(server.log, "stopping: "):
        assert time.monotonic() < deadline, "no stopping line"
        await asyncio.sleep(0.05)
    gate.touch()  # two actions finish while the server stops; the third never does
    assert await asyncio.to_thread(server.proc.wait, 60) == 0

    assert messages(server.log, "stopping: ") == [
        "stopping: no new webhooks; 3 incoming and 3 outgoing deliveries in flight "
        "get up to 5s to finish"
    ]
    assert messages(server.log, "stopped: ") == [
        "stopped: 4 deliveries finished while stopping (incoming 2, outgoing 2); "
        "left stored for the next start: incoming 1, outgoing 3"
    ]
    assert len(ok.received) == 2
    counts = await asyncio.to_thread(server.store_counts)
    assert counts["inbox"] == {"done": 2, "pending": 1}
    assert counts["outbox"] == {"done": 2, "pending": 3}


async def test_an_attempt_that_fails_while_stopping_is_counted_as_left(
    server_process, make_sink
) -> None:
    """An outgoing attempt that times out during the stop has its retry stored: the row is
    left for the next start, counted as such in the last line, and the next start sends it."""
    hanging = await make_sink(hang=True)
    webhooks = {
        "incoming": {"shutdownTimeout": 5},
        "handlers": [{"id": "h", "action": "wake", "template": "x", "verify": PUBLIC}],
        # The attempt gives up after a second: inside the stop's five.
        "outgoing": [
            {"id": "hangs", "url": hanging.url, "events": ["session_started"], "timeout": 1}
        ],
    }
    server = server_process(webhooks)
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(post, server.base, "h", {"n": 1})
    await hanging.wait_for(1)
    assert server.proc is not None and server.log is not None
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, 60) == 0

    assert messages(server.log, "stopped: ") == [
        "stopped: 0 deliveries finished while stopping (incoming 0, outgoing 0); "
        "left stored for the next start: incoming 0, outgoing 1"
    ]
    counts = await asyncio.to_thread(server.store_counts)
    assert counts["outbox"] == {"pending": 1}

    hanging.released.set()  # the endpoint answers from now on
    again = server_process(webhooks)
    await asyncio.to_thread(again.start)
    await hanging.wait_for(2)  # its retry
    assert again.terminate() == 0
    counts = await asyncio.to_thread(again.store_counts)
    assert counts["outbox"] == {"done": 1}


LEAKY = """
    import logging

    log = logging.getLogger("leaky")

    async def leak(ctx):
        log.warning("calling upstream with key %s", ctx.delivery.payload["key"])
        return "done"
"""


def test_a_secret_a_reload_brings_is_masked_in_the_log_from_then_on(
    server_process, tmp_path: Path
) -> None:
    """The log's redaction learns the secrets of a reloaded config before anything can print
    them: a handler's function logging the new secret shows ``***``."""
    (tmp_path / "leaky_fn.py").write_text(textwrap.dedent(LEAKY))
    first = "first-secret-of-the-file-7"
    added = "secret-the-reload-brings-8"
    leaky = {"id": "leaky", "action": "custom", "function": "leaky_fn:leak", "verify": PUBLIC}
    server = server_process({"incoming": {"secret": first}, "handlers": [leaky]})
    server.start()
    assert server.log is not None
    config = json.loads(server.config.read_text())
    config["webhooks"]["handlers"].append(
        {"id": "signed", "action": "custom", "function": "leaky_fn:leak", "secret": added}
    )
    server.config.write_text(json.dumps(config))
    deadline = time.monotonic() + 30
    while not messages(server.log, "config reloaded from "):
        assert time.monotonic() < deadline, "the config was not reloaded"
        time.sleep(0.05)
    post(server.base, "leaky", {"key": added})
    post(server.base, "leaky", {"key": first})
    while len(messages(server.log, "calling upstream with key ")) < 2:
        assert time.monotonic() < deadline, "the handler's lines were not logged"
        time.sleep(0.05)
    assert server.terminate() == 0

    assert messages(server.log, "calling upstream with key ") == [
        "calling upstream with key ***",
        "calling upstream with key ***",
    ]
    text = server.log.read_text()
    assert added not in text and first not in text

"""kill -9 between the two steps of dead-lettering, in either direction: the ``error`` event
was stored, the delivery not yet marked dead. After a restart the delivery fails again, is
marked dead, and the ``error`` event reaches its subscriber, once.

The process is held at that point by a plugin: ``on_event`` runs right after the outbox has
stored the event and before ``publish`` returns, so a plugin that blocks there holds the event
loop between the two steps. It writes a file first, which is the test's cue to kill."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

PAUSE = """
    import os, pathlib, time

    from clawdbot_webhooks_hookspecs import hookimpl

    @hookimpl
    def on_event(event):
        if event.type != "error" or event.data.get("kind") != os.environ["PAUSE_KIND"]:
            return
        marker = pathlib.Path(os.environ["PAUSE_MARKER"])
        if marker.exists():  # the run after the restart goes through
            return
        marker.write_text(event.id)
        time.sleep(600)  # blocks the event loop until the test kills the process
"""

FAIL = """
    from clawdbot_webhooks_hookspecs import ActionError

    async def fail(ctx):
        raise ActionError("refused for good", retry=False)
"""


def install_pause_plugin(site: Path) -> None:
    """The plugin as pip would install it, on the server's ``PYTHONPATH``."""
    (site / "cw_pause.py").write_text(textwrap.dedent(PAUSE))
    info = site / "cw_pause-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cw-pause\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[clawdbot_webhooks]\npause = cw_pause\n")


def post(base: str, hook: str, payload: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"{base}/webhook/{hook}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return str(json.loads(response.read())["id"])


async def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await asyncio.to_thread(check)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return found


async def crash_between_the_steps(proc: Any, marker: Path, before_kill: Callable[[], None]) -> str:
    """Wait for the plugin's cue, check what the store holds then, kill -9; the error event's
    id."""
    event_id = await until(lambda: marker.exists() and marker.read_text(), "the pause")
    before_kill()
    await asyncio.to_thread(proc.kill)
    return str(event_id)


async def test_incoming_dead_letter_survives_kill_9_between_event_and_mark(
    server_process, make_sink, tmp_path
) -> None:
    install_pause_plugin(tmp_path)
    (tmp_path / "hookfns.py").write_text(textwrap.dedent(FAIL))
    marker = tmp_path / "paused"
    errors = await make_sink()
    proc = server_process(
        {
            "handlers": [
                {
                    "id": "fails",
                    "action": "custom",
                    "function": "hookfns:fail",
                    "verify": {"type": "none"},
                }
            ],
            "outgoing": [{"id": "errors", "url": errors.url, "events": ["error"]}],
        },
        env={"PAUSE_KIND": "incoming", "PAUSE_MARKER": str(marker)},
    )
    await asyncio.to_thread(proc.start)
    delivery = await asyncio.to_thread(post, proc.base, "fails", {"n": 1})

    def stored_not_dead() -> None:
        counts = proc.store_counts()
        # The event is stored, the delivery is not dead yet: the pause is between the steps.
        assert counts["outbox"] == {"pending": 1}
        assert counts["inbox"] == {"pending": 1}
        assert errors.received == []

    event_id = await crash_between_the_steps(proc, marker, stored_not_dead)

    await asyncio.to_thread(proc.start)
    await errors.wait_for(1, timeout=60)
    [event] = errors.json_bodies()
    assert event["id"] == event_id and event["type"] == "error"
    assert event["data"]["kind"] == "incoming" and event["data"]["delivery"] == delivery
    await until(lambda: proc.store_counts()["inbox"] == {"dead": 1}, "the delivery to be dead")
    await until(lambda: proc.store_counts()["outbox"] == {"done": 1}, "the event to be done")
    assert proc.terminate() == 0
    assert len(errors.received) == 1


async def test_outgoing_dead_letter_survives_kill_9_between_event_and_mark(
    server_process, make_sink, tmp_path
) -> None:
    install_pause_plugin(tmp_path)
    marker = tmp_path / "paused"
    gone = await make_sink(default=410)
    errors = await make_sink()
    proc = server_process(
        {
            "handlers": [
                {
                    "id": "agent",
                    "action": "run_agent",
                    "agentId": "main",
                    "template": "{{ n }}",
                    "verify": {"type": "none"},
                }
            ],
            "outgoing": [
                {"id": "gone", "url": gone.url, "events": ["agent_response"]},
                {"id": "errors", "url": errors.url, "events": ["error"]},
            ],
        },
        env={"PAUSE_KIND": "outgoing", "PAUSE_MARKER": str(marker)},
    )
    await asyncio.to_thread(proc.start)
    await asyncio.to_thread(post, proc.base, "agent", {"n": 1})

    def stored_not_dead() -> None:
        # The 410 was answered; its row is not dead yet, the error event's row is stored.
        assert len(gone.received) == 1
        assert proc.store_counts()["outbox"] == {"pending": 2}
        assert errors.received == []

    event_id = await crash_between_the_steps(proc, marker, stored_not_dead)
    [response] = gone.json_bodies()

    await asyncio.to_thread(proc.start)
    await errors.wait_for(1, timeout=60)
    [event] = errors.json_bodies()
    assert event["id"] == event_id and event["type"] == "error"
    assert event["data"]["kind"] == "outgoing" and event["data"]["subscription"] == "gone"
    assert event["data"]["event"] == response["id"] and event["data"]["status"] == 410
    await until(
        lambda: proc.store_counts()["outbox"] == {"dead": 1, "done": 1},
        "the 410 row to be dead and the error event done",
    )
    assert proc.terminate() == 0
    assert len(errors.received) == 1

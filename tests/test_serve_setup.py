"""What ``serve`` sets up before it takes requests: the event loop it runs on (and what
happens when the chosen one is missing), and the garbage collector's settings."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop
from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.eventloop import LoopUnavailable, chosen_name, loop_factory, loop_name


def test_auto_and_uvloop_choose_uvloop_where_it_is_installed() -> None:
    assert chosen_name("auto") == "uvloop"
    assert chosen_name("uvloop") == "uvloop"
    assert chosen_name("asyncio") == "asyncio"
    loop = loop_factory("auto")()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


async def test_the_suite_runs_on_the_loop_serve_runs_on() -> None:
    assert loop_name(asyncio.get_running_loop()) == chosen_name("auto")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert chosen_name("auto") == "asyncio"
    with pytest.raises(LoopUnavailable, match="uvloop is not installed"):
        loop_factory("uvloop")
    with pytest.raises(ValueError, match="must be one of"):
        loop_factory("trio")


def test_serve_refuses_a_missing_loop_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    result = CliRunner().invoke(main, ["serve", "--loop", "uvloop", "--port", "0"])
    assert result.exit_code == 2
    assert "uvloop is not installed" in result.output


def test_the_collector_leaves_startup_objects_alone_and_young_ones_longer() -> None:
    # In a process of its own: the settings are the whole process's.
    script = (
        "import gc\n"
        "from clawdbot_webhooks.web.app import YOUNG_COLLECTION_EVERY, tune_collector\n"
        "before = gc.get_threshold()\n"
        "tune_collector()\n"
        "after = gc.get_threshold()\n"
        "assert after == (YOUNG_COLLECTION_EVERY, *before[1:]), (before, after)\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_port_in_use_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "webhooks.json5"
    config.write_text(f'{{webhooks: {{stateDir: "{tmp_path / "state"}"}}}}')
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # A process of its own: serve tunes the garbage collector of the process it runs in.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "clawdbot_webhooks",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr

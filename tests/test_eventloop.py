"""Which event loop ``serve`` runs on, and what happens when the chosen one is missing."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop
from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from clawdbot_webhooks.eventloop import LoopUnavailable, loop_factory, loop_name


def _made_by(choice: str) -> str:
    loop = loop_factory(choice)()
    try:
        return loop_name(loop)
    finally:
        loop.close()


def test_auto_and_uvloop_choose_uvloop_where_it_is_installed() -> None:
    assert _made_by("auto") == "uvloop"
    assert _made_by("uvloop") == "uvloop"
    assert _made_by("asyncio") == "asyncio"
    loop = loop_factory("auto")()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


async def test_the_suite_runs_on_the_loop_serve_runs_on() -> None:
    assert loop_name(asyncio.get_running_loop()) == _made_by("auto")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert _made_by("auto") == "asyncio"
    with pytest.raises(LoopUnavailable, match="uvloop is not installed"):
        loop_factory("uvloop")
    with pytest.raises(ValueError, match="must be one of"):
        loop_factory("trio")


def test_serve_refuses_a_missing_loop_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    result = CliRunner().invoke(main, ["serve", "--loop", "uvloop", "--port", "0"])
    assert result.exit_code == 2
    assert "uvloop is not installed" in result.output

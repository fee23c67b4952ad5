"""Every example in docs/plugins.md runs: each Python block is loaded as a plugin (with the
imports a plugin module would have), what it registers is exercised on a served runtime, the
guide's test is run against the complete example, and its config blocks load. The guide
cannot drift from the code."""

from __future__ import annotations

import logging
import re
import sys
import types
from pathlib import Path
from typing import Any

import click
import json5
import pytest
from clawdbot_webhooks_hookspecs import CommandEnv
from click.testing import CliRunner

from clawdbot_webhooks.config import plugin_selection
from clawdbot_webhooks.testing import plugin_set_with, serve

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", GUIDE, re.S)
PYTHON = [text for lang, text in BLOCKS if lang == "python"]

# What a plugin module holding a snippet would import; the snippets leave it out.
PRELUDE = """
from __future__ import annotations
import hmac, logging, time
from typing import Any
import click
from marshmallow import Schema, fields
from clawdbot_webhooks_hookspecs import *
from clawdbot_webhooks_hookspecs import hookimpl
log = logging.getLogger("guide")
PAGED = []
async def _page(payload):
    PAGED.append(payload)
def notify_pager(payload):
    return _page(payload)
"""


def module_of(index: int, text: str) -> types.ModuleType:
    module = types.ModuleType(f"guide_example_{index}")
    exec(compile(PRELUDE + text, f"docs/plugins.md block {index}", "exec"), module.__dict__)
    return module


def is_test(text: str) -> bool:
    return "from clawdbot_webhooks.testing import" in text


def is_complete_example(text: str) -> bool:
    return text.startswith('"""Shout')


SNIPPETS = {
    i: module_of(i, text)
    for i, text in enumerate(PYTHON)
    if not is_test(text) and not is_complete_example(text)
}


def test_every_python_block_is_covered() -> None:
    assert len(PYTHON) >= 10
    assert sum(map(is_test, PYTHON)) == 2 and sum(map(is_complete_example, PYTHON)) == 1
    assert len(SNIPPETS) == len(PYTHON) - 3


def test_every_snippet_loads_as_a_plugin() -> None:
    plugins = plugin_set_with(*((f"guide-{i}", m) for i, m in SNIPPETS.items()))
    registered = {
        name
        for info in plugins.infos.values()
        for names in info.registers.values()
        for name in names
    }
    assert {"ping", "initials", "stdout", "token", "null"} <= registered


def snippet(name: str) -> types.ModuleType:
    [found] = [m for m in SNIPPETS.values() if hasattr(m, name)]
    return found


async def test_the_snippets_work_on_a_served_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "guide")
    config: dict[str, Any] = {
        "handlers": [
            {"id": "ping", "action": "ping", "peer": "ops"},
            {
                "id": "who",
                "action": "send_message",
                "template": "{{ user.name | initials }}",
                "target": {"channel": "c", "peer": "p"},
            },
            {
                "id": "signed",
                "action": "send_message",
                "template": "signed",
                "target": {"channel": "c", "peer": "p"},
                "verify": {"type": "token", "token": "s3"},
            },
            {
                "id": "fail",
                "action": "forward",
                "url": "http://127.0.0.1:9/",
                "retry": {"maxAttempts": 1},
            },
        ],
        "outgoing": [
            {
                "id": "out",
                "transport": "stdout",
                "url": "stdout:all",
                "events": ["message_received"],
            }
        ],
    }
    plugins = [(f"guide-{i}", m) for i, m in SNIPPETS.items()]
    async with serve(config, plugins, state_dir=tmp_path / "state") as srv:
        assert (await srv.post("ping", {}))[0] == 202
        assert (await srv.post("who", {"user": {"name": "Ada Lovelace"}}))[0] == 202
        assert (await srv.post("signed", {}))[0] == 401
        assert (await srv.post("signed", {}, headers={"X-Token": "s3"}))[0] == 202
        _, dropped = await srv.post("ping", {"test": True})  # on_incoming's DROP
        assert (await srv.post("fail", {}))[0] == 202
        await srv.idle()
        await srv.runtime.bus.drain(timeout=5)
        sent = {(m["channel"], m["peer"], m["text"]) for m in srv.messages() if m["kind"] == "sent"}
        assert sent == {("slack", "ops", "ping"), ("c", "p", "AL"), ("c", "p", "signed")}
        record = await srv.runtime.store.get_incoming(dropped["id"])
        assert record is not None and record.status == "dropped"
    # The transport printed the outgoing events; the pager heard of the error event; the
    # wrapper timed the on_incoming calls.
    assert '"type": "message_received"' in capsys.readouterr().out.replace('":"', '": "')
    assert [p["type"] for p in snippet("on_event").PAGED] == ["error"]
    assert any("on_incoming took" in r.getMessage() for r in caplog.records)
    # The verifier signs what it verifies.
    token = snippet("register_verifiers")
    verifier = token.Token()
    assert verifier.sign(b"{}", {"token": "s3"}, 0) == {"X-Token": "s3"}


async def test_the_null_gateway_snippet(tmp_path: Path) -> None:
    config = {
        "gateway": {"type": "null"},
        "handlers": [
            {
                "id": "m",
                "action": "send_message",
                "template": "x",
                "target": {"channel": "c", "peer": "p"},
            }
        ],
    }
    async with serve(
        config, [("guide-null", snippet("register_gateways"))], state_dir=tmp_path
    ) as srv:
        assert await srv.runtime.gateway.probe() == "null gateway"
        _, body = await srv.post("m", {})
        await srv.idle()
        record = await srv.runtime.store.get_incoming(body["id"])
        assert record is not None and record.status == "done"


def test_the_command_snippet(tmp_path: Path) -> None:
    cli = click.Group()
    snippet("register_commands").register_commands(cli)
    env = CommandEnv(state_dir=lambda path: str(tmp_path), settings=lambda path, plugin: {})
    result = CliRunner().invoke(cli, ["shout-log"], obj=env)
    assert (result.exit_code, result.output) == (0, f"{tmp_path}\n")


async def test_the_guides_tests_pass_against_the_complete_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [complete] = [text for text in PYTHON if is_complete_example(text)]
    my_plugin = types.ModuleType("my_plugin")
    exec(compile(complete, "docs/plugins.md complete example", "exec"), my_plugin.__dict__)
    monkeypatch.setitem(sys.modules, "my_plugin", my_plugin)
    tests = [text for text in PYTHON if is_test(text)]
    for n, test in enumerate(tests):
        namespace: dict[str, Any] = {}
        exec(compile(test, f"docs/plugins.md test example {n}", "exec"), namespace)
        [run] = [fn for name, fn in namespace.items() if name.startswith("test_")]
        await run(tmp_path / f"test-{n}")
    # The handler the guide shows for it.
    [_, handler_block] = [text for lang, text in BLOCKS if lang == "json5"]
    handler = json5.loads(handler_block)
    async with serve(
        {"handlers": [handler]}, [("shout", my_plugin)], state_dir=tmp_path / "yell"
    ) as srv:
        assert (await srv.post(handler["id"], {"text": "hello"}))[0] == 202
        await srv.idle()
        assert [m["text"] for m in srv.messages()] == ["*HELLO*"]


def test_the_plugins_config_block_loads() -> None:
    import clawdbot_webhooks_digest
    import clawdbot_webhooks_github
    import clawdbot_webhooks_jsonl

    [plugins_block, _] = [text for lang, text in BLOCKS if lang == "json5"]
    selection = plugin_selection(json5.loads(plugins_block)["webhooks"])
    contrib = [
        ("github", clawdbot_webhooks_github),
        ("digest", clawdbot_webhooks_digest),
        ("jsonl", clawdbot_webhooks_jsonl),
    ]
    loaded = plugin_set_with(*contrib, selection=selection)
    assert [name for name, _ in contrib if loaded.infos[name].enabled] == ["github", "jsonl"]
    assert "digest" not in loaded.registries.actions

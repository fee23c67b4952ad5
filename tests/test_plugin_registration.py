"""Registrations are checked when the plugins load, whether or not a handler uses them: each
mistake makes ``check`` and ``serve`` exit 2 with one line naming the plugin, the kind, the
name and what is wrong, and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main

HEAD = """
from marshmallow import Schema, fields
from clawdbot_webhooks_hookspecs import hookimpl

class Options(Schema):
    text = fields.String()

async def coroutine(*args):
    return None
"""

MISTAKES = {
    "action without schema": (
        """
class Careless:
    async def run(self, ctx):
        return None

@hookimpl
def register_actions(register):
    register("careless", Careless())
""",
        "plugin 'sloppy' registers action 'careless': "
        "has no schema (a marshmallow Schema class for its options)",
    ),
    "action schema not a Schema class": (
        """
class Odd:
    schema = {"text": "string"}
    async def run(self, ctx):
        return None

@hookimpl
def register_actions(register):
    register("odd", Odd())
""",
        "plugin 'sloppy' registers action 'odd': "
        "has a schema that is not a marshmallow Schema class",
    ),
    "action run not a coroutine function": (
        """
class Blocking:
    schema = Options
    def run(self, ctx):
        return None

@hookimpl
def register_actions(register):
    register("blocking", Blocking())
""",
        "plugin 'sloppy' registers action 'blocking': "
        "has a run that is not a coroutine function (async def run(ctx))",
    ),
    "action without run": (
        """
class Idle:
    schema = Options

@hookimpl
def register_actions(register):
    register("idle", Idle())
""",
        "plugin 'sloppy' registers action 'idle': has no run method (async def run(ctx))",
    ),
    "transport without send": (
        """
class Mute:
    schemes = frozenset({"mute"})

@hookimpl
def register_transports(register):
    register("mute", Mute())
""",
        "plugin 'sloppy' registers transport 'mute': has no send method (async def send(request))",
    ),
    "verifier without verify": (
        """
class Trusting:
    schema = Options

@hookimpl
def register_verifiers(register):
    register("trusting", Trusting())
""",
        "plugin 'sloppy' registers verifier 'trusting': "
        "has no verify method (def verify(request, options))",
    ),
    "filter not callable": (
        """
@hookimpl
def register_template_filters(register):
    register("loud", "upper")
""",
        "plugin 'sloppy' registers filter 'loud': is not callable",
    ),
    "gateway factory not callable": (
        """
class Gateway:
    async def probe(self):
        return "x"

@hookimpl
def register_gateways(register):
    register("static", Gateway())
""",
        "plugin 'sloppy' registers gateway 'static': "
        "is not a callable factory (factory(options, env) -> Gateway)",
    ),
    "empty name": (
        """
@hookimpl
def register_template_filters(register):
    register("", str.upper)
""",
        "plugin 'sloppy' registers filter '': the name must be a non-empty string without spaces",
    ),
    "name with a space": (
        """
class Fine:
    schema = Options
    run = staticmethod(coroutine)

@hookimpl
def register_actions(register):
    register("two words", Fine())
""",
        "plugin 'sloppy' registers action 'two words': "
        "the name must be a non-empty string without spaces",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_registration_mistake_is_one_line_and_exit_2(
    mistake: str, fake_distribution, tmp_path: Path
) -> None:
    source, line = MISTAKES[mistake]
    fake_distribution("clawdbot-webhooks-sloppy", "0.1", "cw_sloppy", HEAD + source, "sloppy")
    config = tmp_path / "config.json"
    # No handler uses what the plugin registers: the mistake is found all the same.
    config.write_text(json.dumps({"webhooks": {"stateDir": str(tmp_path / "state")}}))
    for command in ("check", "serve"):
        result = CliRunner().invoke(main, [command, "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert result.output == f"Plugin error: {line}\n"
    # Switched off, the same plugin is harmless.
    config.write_text(
        json.dumps(
            {"webhooks": {"stateDir": str(tmp_path / "state"), "plugins": {"disabled": ["sloppy"]}}}
        )
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (
            "@hookimpl\ndef on_incoming(delivery, extra):\n    return None\n",
            "on_incoming(delivery, extra) Argument(s) {'extra'} are declared in the hookimpl",
        ),
        (
            "@hookimpl(wrapper=True)\ndef on_event(event):\n    return None\n",
            "Declared as wrapper=True or hookwrapper=True but function is not a generator",
        ),
    ],
)
def test_a_hook_pluggy_refuses_is_one_line_and_exit_2(
    source: str, words: str, fake_distribution, tmp_path: Path
) -> None:
    fake_distribution("clawdbot-webhooks-sloppy", "0.1", "cw_sloppy", HEAD + source, "sloppy")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"webhooks": {"stateDir": str(tmp_path / "state")}}))
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith("Plugin error: plugin 'sloppy': ") and words in line

"""The plugin manager: entry points, built-ins, switching plugins on and off, clashes,
listing, and containment of a plugin's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.builtin.local_gateway import read_log
from clawdbot_webhooks.cli import main
from clawdbot_webhooks.plugins import PluginError, PluginSelection, load_plugins

SHOUT = """
    from marshmallow import Schema, fields
    from clawdbot_webhooks_hookspecs import Template, hookimpl

    class Shout:
        class schema(Schema):
            template = Template(required=True)
            times = fields.Integer(load_default=1)

        async def run(self, ctx):
            text = ctx.options["template"].upper() * ctx.options["times"]
            await ctx.gateway.send_message(channel="shout", peer="all", text=text,
                                           session=ctx.session,
                                           idempotency_key=ctx.idempotency_key)
            return {"shouted": text}

    @hookimpl
    def register_actions(register):
        register("shout", Shout())

    @hookimpl
    def register_template_filters(register):
        register("sparkle", lambda value: f"*{value}*")
"""

HANDLER = {
    "id": "s",
    "action": "shout",
    "template": "{{ word | sparkle }}",
    "times": 2,
    "verify": {"type": "none"},
}


def write(tmp_path: Path, webhooks: dict) -> str:
    path = tmp_path / "config.json5"
    path.write_text(json.dumps({"webhooks": {"stateDir": str(tmp_path / "st"), **webhooks}}))
    return str(path)


async def test_installed_plugin_adds_an_action_and_a_filter(
    fake_distribution, start_server
) -> None:
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", SHOUT, entry="shout")
    srv = await start_server({"handlers": [HANDLER]})
    status, body = await srv.post("s", {"word": "hey"})
    assert status == 202
    await srv.idle()
    [message] = read_log(srv.runtime.settings.state_dir)
    assert message["text"] == "*HEY**HEY*"
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.result == {"shouted": "*HEY**HEY*"}


def test_disabling_removes_both_and_check_names_the_plugin(
    fake_distribution, tmp_path: Path
) -> None:
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", SHOUT, entry="shout")
    plugins = load_plugins(PluginSelection.from_config(disabled=["shout"]))
    assert "shout" not in plugins.registries.actions
    assert "sparkle" not in plugins.registries.filters
    config = write(tmp_path, {"handlers": [HANDLER], "plugins": {"disabled": ["shout"]}})
    result = CliRunner().invoke(main, ["check", "--config", config])
    assert result.exit_code == 2
    assert (
        "webhooks.handlers[0].action: action 'shout' is provided by plugin 'shout', "
        "which is disabled in webhooks.plugins.disabled"
    ) in result.output
    # With the plugin on, the same config checks clean.
    config = write(tmp_path, {"handlers": [HANDLER]})
    result = CliRunner().invoke(main, ["check", "--config", config])
    assert result.exit_code == 0, result.output


def test_a_switched_off_plugin_is_not_imported_unless_asked_what_it_registers(
    fake_distribution, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switched off, a plugin is never loaded by a server or a clean check: its import-time
    code does not run. Only a listing, or an error that names it, loads it alone."""
    marker = tmp_path / "imported"
    monkeypatch.setenv("CW_SHOUT_MARK", str(marker))
    marked = "\n    import os, pathlib\n    pathlib.Path(os.environ['CW_SHOUT_MARK']).touch()"
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", marked + SHOUT, entry="shout")
    plugins = load_plugins(PluginSelection.from_config(disabled=["shout"]))
    config = write(tmp_path, {"handlers": [], "plugins": {"disabled": ["shout"]}})
    assert CliRunner().invoke(main, ["check", "--config", config]).exit_code == 0
    assert not marker.exists()
    plugins.describe_off()  # as `plugins` asks, to list what it would register
    assert marker.exists()
    assert plugins.infos["shout"].registers == {"actions": ["shout"], "filters": ["sparkle"]}


def test_filter_of_a_disabled_plugin_is_an_unknown_filter(fake_distribution) -> None:
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", SHOUT, entry="shout")
    from clawdbot_webhooks.config import ConfigError, build_settings

    plugins = load_plugins(PluginSelection.from_config(disabled=["shout"]))
    raw = {
        "handlers": [
            {
                "id": "m",
                "action": "send_message",
                "template": "{{ x | sparkle }}",
                "verify": {"type": "none"},
                "target": {"channel": "c", "peer": "p"},
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        build_settings(raw, plugins, None)
    [error] = caught.value.errors
    assert error == (
        "webhooks.handlers[0].template: template error on line 1: No filter named 'sparkle'. "
        "(it is provided by plugin 'shout', which is disabled in webhooks.plugins.disabled)"
    )


def test_allowlist_and_environment_override(fake_distribution, monkeypatch) -> None:
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", SHOUT, entry="shout")
    only_other = load_plugins(PluginSelection.from_config(enabled=[]))
    assert "shout" not in only_other.registries.actions
    assert only_other.infos["shout"].reason == "not listed in webhooks.plugins.enabled"
    assert "run_agent" in only_other.registries.actions  # built-ins are not affected
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_LOAD_PLUGINS", "shout")
    from_env = load_plugins(PluginSelection.from_config(disabled=["shout"]))
    assert "shout" in from_env.registries.actions
    monkeypatch.setenv("CLAWDBOT_WEBHOOKS_LOAD_PLUGINS", "")
    none = load_plugins(PluginSelection.from_config())
    assert "shout" not in none.registries.actions
    assert none.infos["shout"].reason == "not listed in CLAWDBOT_WEBHOOKS_LOAD_PLUGINS"


def test_a_name_clash_names_both_plugins(fake_distribution) -> None:
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", SHOUT, entry="shout")
    fake_distribution("clawdbot-webhooks-loud", "0.1", "cw_loud", SHOUT, entry="loud")
    with pytest.raises(PluginError) as caught:
        load_plugins()
    message = str(caught.value)
    assert "action 'shout' is registered by both plugin" in message
    assert "'shout'" in message and "'loud'" in message
    # Clashing with a built-in name is caught the same way.
    fake_distribution(
        "clawdbot-webhooks-fwd",
        "0.1",
        "cw_fwd",
        """
        from marshmallow import Schema
        from clawdbot_webhooks_hookspecs import hookimpl
        class Forward:
            schema = Schema
            async def run(self, ctx):
                return None
        @hookimpl
        def register_actions(register):
            register("forward", Forward())
    """,
        entry="fwd",
    )
    with pytest.raises(PluginError, match=r"both plugin 'forward-action' and plugin 'fwd'"):
        load_plugins(PluginSelection.from_config(disabled=["loud"]))


def test_a_misspelt_hook_fails_loudly(fake_distribution) -> None:
    fake_distribution(
        "clawdbot-webhooks-typo",
        "0.1",
        "cw_typo",
        """
        from clawdbot_webhooks_hookspecs import hookimpl
        @hookimpl
        def register_action(register):
            pass
    """,
        entry="typo",
    )
    with pytest.raises(PluginError) as caught:
        load_plugins()
    # Named as every other plugin error names a plugin: its entry point and distribution,
    # with the hook it most likely meant.
    assert str(caught.value) == (
        "plugin 'typo' (clawdbot-webhooks-typo) implements 'register_action', which is no "
        "hook of the plugin API; did you mean 'register_actions'?"
    )


def test_plugins_listing(fake_distribution, tmp_path: Path) -> None:
    fake_distribution("clawdbot-webhooks-shout", "1.2.3", "cw_shout", SHOUT, entry="shout")
    config = write(tmp_path, {"plugins": {"disabled": ["shout"]}})
    result = CliRunner().invoke(main, ["plugins", "--json", "--config", config])
    assert result.exit_code == 0, result.output
    listing = {p["name"]: p for p in json.loads(result.output)}
    shout = listing["shout"]
    assert (shout["distribution"], shout["version"]) == ("clawdbot-webhooks-shout", "1.2.3")
    assert shout["enabled"] is False
    assert shout["reason"] == "disabled in webhooks.plugins.disabled"
    assert shout["registers"] == {"actions": ["shout"], "filters": ["sparkle"]}
    # One built-in plugin per action, transport and gateway, each under its own name.
    for plugin, kind, name in [
        ("send-message-action", "actions", "send_message"),
        ("run-agent-action", "actions", "run_agent"),
        ("wake-action", "actions", "wake"),
        ("forward-action", "actions", "forward"),
        ("custom-action", "actions", "custom"),
        ("http-transport", "transports", "http"),
        ("local-gateway", "gateways", "local"),
        ("clawdbot-gateway", "gateways", "clawdbot"),
        ("clawdbot-http-gateway", "gateways", "clawdbot-http"),
    ]:
        info = listing[plugin]
        assert info["enabled"] and info["builtin"] and info["reason"] == "built in"
        assert info["distribution"] == "clawdbot-webhooks"
        assert info["registers"] == {kind: [name]}
    table = CliRunner().invoke(main, ["plugins", "--config", config])
    assert "disabled (disabled in webhooks.plugins.disabled)" in table.output
    assert "actions: shout; filters: sparkle" in table.output


class Broken:
    """A plugin that fails everywhere it can."""

    def __init__(self) -> None:
        self.calls = 0

    from clawdbot_webhooks_hookspecs import hookimpl

    @hookimpl
    def on_event(self, event):  # type: ignore[no-untyped-def]
        raise RuntimeError("on_event exploded")

    @hookimpl
    def register_template_filters(self, register):  # type: ignore[no-untyped-def]
        def explode(value):  # type: ignore[no-untyped-def]
            raise ValueError("filter exploded")

        register("explode", explode)

    @hookimpl
    def register_actions(self, register):  # type: ignore[no-untyped-def]
        plugin = self

        class Boom:
            from marshmallow import Schema

            schema = Schema

            async def run(self, ctx):  # type: ignore[no-untyped-def]
                plugin.calls += 1
                raise RuntimeError("action exploded")

        register("boom", Boom())


async def test_a_broken_plugin_is_contained(start_server, recorder, caplog) -> None:
    broken = Broken()
    config = {
        "handlers": [
            {
                "id": "boom",
                "action": "boom",
                "retry": {"maxAttempts": 2, "initialDelay": 0.02, "jitter": False},
            },
            {
                "id": "filter",
                "action": "send_message",
                "template": "{{ x | explode }}",
                "target": {"channel": "c", "peer": "p"},
            },
            {"id": "fine", "action": "run_agent", "agentId": "a", "template": "still here"},
        ],
    }
    srv = await start_server(config, plugins=[("broken", broken), ("recorder", recorder)])
    _, boom = await srv.post("boom", {})
    _, filt = await srv.post("filter", {"x": 1})
    status, fine = await srv.post("fine", {})
    assert status == 202
    await srv.idle()
    store = srv.runtime.store
    boom_record = await store.get_incoming(boom["id"])
    assert boom_record is not None and boom_record.status == "dead"
    assert boom_record.attempts == 2 and broken.calls == 2
    assert "action exploded" in (boom_record.last_error or "")
    filt_record = await store.get_incoming(filt["id"])
    assert filt_record is not None and filt_record.status == "dead"
    assert "filter exploded" in (filt_record.last_error or "")
    fine_record = await store.get_incoming(fine["id"])
    assert fine_record is not None and fine_record.status == "done"
    # The other subscriber still saw every event, and the failure was logged with the name.
    assert len(recorder.of("agent_response")) == 1
    assert len(recorder.of("error")) == 2
    assert any("plugin 'broken' failed in on_event" in r.getMessage() for r in caplog.records)


class Gatekeeper:
    """An on_incoming plugin that drops test pings and rewrites the rest."""

    from clawdbot_webhooks_hookspecs import hookimpl

    @hookimpl
    def on_incoming(self, delivery, handler):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        from clawdbot_webhooks_hookspecs import DROP

        if delivery.payload.get("ping"):
            return DROP
        return replace(delivery, payload={**delivery.payload, "word": "rewritten"})


async def test_on_incoming_transforms_and_drops(start_server) -> None:
    handler = {
        "id": "m",
        "action": "send_message",
        "template": "{{ word }}",
        "target": {"channel": "c", "peer": "p"},
    }
    srv = await start_server({"handlers": [handler]}, plugins=[("gate", Gatekeeper())])
    _, dropped = await srv.post("m", {"ping": True, "word": "x"})
    _, kept = await srv.post("m", {"word": "original"})
    await srv.idle()
    dropped_record = await srv.runtime.store.get_incoming(dropped["id"])
    assert dropped_record is not None and dropped_record.status == "dropped"
    assert [m["text"] for m in read_log(srv.runtime.settings.state_dir)] == ["rewritten"]
    kept_record = await srv.runtime.store.get_incoming(kept["id"])
    assert kept_record is not None and kept_record.status == "done"


class TokenAndMemory:
    """A verifier and a transport registered by one inline plugin."""

    from clawdbot_webhooks_hookspecs import hookimpl

    def __init__(self) -> None:
        self.sent: list[object] = []

    @hookimpl
    def register_verifiers(self, register):  # type: ignore[no-untyped-def]
        import hmac

        from clawdbot_webhooks_hookspecs import VerificationError
        from marshmallow import Schema, fields

        class Token:
            class schema(Schema):
                token = fields.String(required=True)

            def verify(self, request, options):  # type: ignore[no-untyped-def]
                given = request.headers.get("x-token", "").encode()
                if not hmac.compare_digest(given, options["token"].encode()):
                    raise VerificationError("X-Token does not match")
                return request.headers.get("x-request-id")

        register("token", Token())

    @hookimpl
    def register_transports(self, register):  # type: ignore[no-untyped-def]
        from clawdbot_webhooks_hookspecs import OutgoingResponse

        plugin = self

        class Memory:
            schemes = frozenset({"memory"})

            async def send(self, request):  # type: ignore[no-untyped-def]
                plugin.sent.append(request)
                return OutgoingResponse(204)

        register("memory", Memory())


async def test_plugin_verifier_and_transport(start_server) -> None:
    import asyncio

    plugin = TokenAndMemory()
    config = {
        "handlers": [
            {
                "id": "t",
                "action": "run_agent",
                "agentId": "a",
                "template": "hi",
                "verify": {"type": "token", "token": "s3cret-token"},
            }
        ],
        "outgoing": [
            {"id": "mem", "url": "memory://x", "events": ["agent_response"], "transport": "memory"}
        ],
    }
    srv = await start_server(config, plugins=[("tm", plugin)])
    status, body = await srv.post("t", {}, headers={"X-Token": "wrong"})
    assert status == 401 and "s3cret" not in json.dumps(body)
    status, _ = await srv.post("t", {}, headers={"X-Token": "s3cret-token", "X-Request-Id": "r1"})
    assert status == 202
    status, again = await srv.post(
        "t", {}, headers={"X-Token": "s3cret-token", "X-Request-Id": "r1"}
    )
    assert status == 200 and again["duplicate"] is True
    await srv.idle()
    for _ in range(200):
        if plugin.sent:
            break
        await asyncio.sleep(0.02)
    [request] = plugin.sent
    assert json.loads(request.body)["type"] == "agent_response"  # type: ignore[attr-defined]


class BrokenAtTheEdges:
    """Raises in on_incoming (for one hook id) and in its transport's send."""

    from clawdbot_webhooks_hookspecs import hookimpl

    @hookimpl
    def on_incoming(self, delivery, handler):  # type: ignore[no-untyped-def]
        if handler.id == "boom":
            raise RuntimeError("on_incoming exploded")
        return None

    @hookimpl
    def register_transports(self, register):  # type: ignore[no-untyped-def]
        class Exploding:
            async def send(self, request):  # type: ignore[no-untyped-def]
                raise RuntimeError("send exploded")

        register("exploding", Exploding())


async def test_a_broken_on_incoming_and_transport_are_contained(start_server) -> None:
    import asyncio

    from clawdbot_webhooks.outgoing.outbox import outbox_id

    retry = {"maxAttempts": 2, "initialDelay": 0.02, "maxDelay": 0.05, "jitter": False}
    config = {
        "handlers": [
            {"id": "boom", "action": "run_agent", "agentId": "a", "template": "x", "retry": retry},
            {"id": "fine", "action": "run_agent", "agentId": "a", "template": "y"},
        ],
        "outgoing": [
            {
                "id": "bad",
                "url": "http://127.0.0.1:9/never",
                "events": ["agent_response"],
                "transport": "exploding",
                "retry": retry,
            }
        ],
    }
    events: list[object] = []

    class Watch:
        from clawdbot_webhooks_hookspecs import hookimpl

        @hookimpl
        def on_event(self, event):  # type: ignore[no-untyped-def]
            events.append(event)

    srv = await start_server(config, plugins=[("edges", BrokenAtTheEdges()), ("w", Watch())])
    _, boom = await srv.post("boom", {})
    status, fine = await srv.post("fine", {})
    assert status == 202
    await srv.idle()
    record = await srv.runtime.store.get_incoming(boom["id"])
    assert record is not None and record.status == "dead" and record.attempts == 2
    assert "plugin 'edges' failed in on_incoming" in (record.last_error or "")
    fine_record = await srv.runtime.store.get_incoming(fine["id"])
    assert fine_record is not None and fine_record.status == "done"
    [reply] = [e for e in events if e.type == "agent_response"]  # type: ignore[attr-defined]
    row_id = outbox_id(reply.id, "bad")  # type: ignore[attr-defined]
    for _ in range(300):
        row = await srv.runtime.store.get_outgoing(row_id)
        if row is not None and row.status == "dead":
            break
        await asyncio.sleep(0.02)
    assert row is not None and row.status == "dead" and row.attempts == 2
    assert "transport 'exploding'" in (row.last_error or "")
    assert "send exploded" in (row.last_error or "")
    # The server still answers.
    status, _ = await srv.post("fine", {})
    assert status == 202


CRASHY = """
    from clawdbot_webhooks_hookspecs import hookimpl

    @hookimpl
    def register_actions(register):
        raise RuntimeError("cannot register today")
"""


def test_a_register_hook_that_raises_is_a_clear_plugin_error(
    fake_distribution, tmp_path: Path
) -> None:
    fake_distribution("clawdbot-webhooks-crashy", "0.3", "cw_crashy", CRASHY, entry="crashy")
    with pytest.raises(PluginError) as caught:
        load_plugins()
    assert str(caught.value) == (
        "plugin 'crashy' failed in register_actions: RuntimeError('cannot register today')"
    )
    config = write(tmp_path, {})
    for command in (["check"], ["serve"]):
        result = CliRunner().invoke(main, [*command, "--config", config])
        assert result.exit_code == 2
        assert "plugin 'crashy' failed in register_actions" in result.output
        assert "Traceback" not in result.output
    # Switched off, it is harmless.
    config = write(tmp_path, {"plugins": {"disabled": ["crashy"]}})
    assert CliRunner().invoke(main, ["check", "--config", config]).exit_code == 0

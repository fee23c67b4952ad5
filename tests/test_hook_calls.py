"""Hooks are called the way pluggy documents for implementations: fewer arguments than the
specification, tryfirst/trylast order, new- and old-style wrappers around the whole call,
tracing and call monitoring; while each failure still names its plugin, on_incoming chains,
and one plugin's exception never reaches another."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import DROP, Delivery, Handler, hookimpl

from clawdbot_webhooks.plugins.calls import HookCalls, call_on_incoming
from clawdbot_webhooks.testing import plugin_set_with

MESSAGE = {
    "id": "m",
    "action": "send_message",
    "template": "{{ word }}",
    "target": {"channel": "c", "peer": "p"},
}


class Appender:
    """on_incoming(delivery) only: appends its mark to the payload's word."""

    def __init__(self, mark: str, calls: list[str], **opts: bool) -> None:
        self.mark = mark
        self.calls = calls

        @hookimpl(**opts)
        def on_incoming(delivery):  # type: ignore[no-untyped-def]
            self.calls.append(self.mark)
            word = delivery.payload["word"] + self.mark
            return replace(delivery, payload={**delivery.payload, "word": word})

        self.on_incoming = on_incoming


class Timer:
    """A new-style wrapper around the whole on_incoming chain and around on_event."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.seen: list[Any] = []

    @hookimpl(wrapper=True)
    def on_incoming(self, delivery: Any) -> Generator[None, Any, Any]:
        self.calls.append("timer:before")
        result = yield
        self.calls.append("timer:after")
        self.seen.append(result)
        return result

    @hookimpl(wrapper=True)
    def on_event(self) -> Generator[None, Any, Any]:
        self.calls.append("timer:event")
        return (yield)


class OldWrapper:
    @hookimpl(hookwrapper=True)
    def on_event(self, event: Any) -> Generator[None, Any, None]:
        self.before = event.type
        outcome = yield
        self.outcome = outcome.get_result()


class Events:
    """on_event() with no arguments, and one that fails."""

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def on_event(self) -> None:
        self.count += 1


class FailingEvents:
    @hookimpl(tryfirst=True)
    def on_event(self, event: Any) -> None:
        raise RuntimeError("event hook exploded")


async def test_fewer_arguments_order_and_wrappers(start_server) -> None:
    calls: list[str] = []
    timer = Timer(calls)
    plugins = [
        ("last", Appender("L", calls, trylast=True)),
        ("first", Appender("F", calls, tryfirst=True)),
        ("middle", Appender("M", calls)),
        ("timer", timer),
    ]
    srv = await start_server({"handlers": [MESSAGE]}, plugins=plugins)
    status, body = await srv.post("m", {"word": "w"})
    assert status == 202
    await srv.idle()
    # tryfirst first, trylast last, each seeing what the one before returned; the wrapper
    # around the whole chain, once.
    chain = [c for c in calls if c != "timer:event"]
    assert chain == ["timer:before", "F", "M", "L", "timer:after"]
    assert [m["text"] for m in srv.messages()] == ["wFML"]
    # As for any hook, a wrapper sees the call's list of results: here the chain's outcome.
    [[outcome]] = timer.seen
    assert outcome.payload["word"] == "wFML" and outcome.id == body["id"]


class Dropper:
    @hookimpl(tryfirst=True)
    def on_incoming(self) -> object:
        return DROP


async def test_drop_ends_the_chain_and_the_wrapper_sees_it(start_server) -> None:
    calls: list[str] = []
    timer = Timer(calls)
    plugins = [("after", Appender("A", calls)), ("drop", Dropper()), ("timer", timer)]
    srv = await start_server({"handlers": [MESSAGE]}, plugins=plugins)
    _, body = await srv.post("m", {"word": "w"})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dropped"
    chain = [c for c in calls if c != "timer:event"]
    assert chain == ["timer:before", "timer:after"] and timer.seen == [[DROP]]
    assert srv.messages() == []


class Raiser:
    @hookimpl(tryfirst=True)
    def on_incoming(self, handler: Any) -> None:
        raise ValueError(f"no thanks, {handler.id}")


async def test_a_failing_on_incoming_is_named_and_stops_the_chain(start_server) -> None:
    calls: list[str] = []
    handler = {**MESSAGE, "retry": {"maxAttempts": 1}}
    plugins = [("after", Appender("A", calls)), ("picky", Raiser())]
    srv = await start_server({"handlers": [handler]}, plugins=plugins)
    _, body = await srv.post("m", {"word": "w"})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    assert record.last_error == ("plugin 'picky' failed in on_incoming: ValueError('no thanks, m')")
    assert calls == []


class BadWrapper:
    @hookimpl(wrapper=True)
    def on_incoming(self) -> Generator[None, Any, Any]:
        yield
        raise RuntimeError("wrapper exploded")


async def test_a_failing_wrapper_is_named(start_server) -> None:
    handler = {**MESSAGE, "retry": {"maxAttempts": 1}}
    srv = await start_server({"handlers": [handler]}, plugins=[("clumsy", BadWrapper())])
    _, body = await srv.post("m", {"word": "w"})
    await srv.idle()
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "dead"
    assert record.last_error == (
        "plugin 'clumsy' failed in on_incoming: RuntimeError('wrapper exploded')"
    )


async def test_on_event_without_arguments_wrappers_and_isolation(
    start_server, recorder, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    events, old = Events(), OldWrapper()
    plugins = [
        ("events", events),
        ("failing", FailingEvents()),
        ("old", old),
        ("timer", Timer(calls)),
        ("recorder", recorder),
    ]
    handler = {"id": "a", "action": "run_agent", "agentId": "x", "template": "hi"}
    srv = await start_server({"handlers": [handler]}, plugins=plugins)
    await srv.post("a", {})
    await srv.idle()
    assert len(recorder.of("agent_response")) == 1
    seen = len(recorder.events)
    # Every event reached the plugin without arguments, despite the one failing before it.
    assert events.count == seen and calls.count("timer:event") == seen
    assert old.before == recorder.events[-1].type and old.outcome == []
    failures = [
        r for r in caplog.records if "plugin 'failing' failed in on_event" in r.getMessage()
    ]
    assert len(failures) == seen


def test_tracing_and_monitoring_see_every_call() -> None:
    delivery = Delivery("d1", "m", 0.0, "application/json", b"{}", {"word": "w"}, {}, {}, "", "s")
    handler = Handler("m", "/m", "send_message", {})
    calls: list[str] = []
    plugin_set = plugin_set_with(("first", Appender("F", calls)), ("timer", Timer(calls)))
    pm = plugin_set.pm
    seen: list[tuple[str, list[str]]] = []

    def before(hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        seen.append((hook_name, [impl.plugin_name for impl in impls]))

    undo = pm.add_hookcall_monitoring(before, lambda *args: None)
    try:
        out = call_on_incoming(HookCalls(pm, "on_incoming"), delivery, handler)
    finally:
        undo()
    assert out.payload["word"] == "wF"  # type: ignore[attr-defined]
    assert seen == [("on_incoming", ["<temp>", "timer"]), ("on_incoming", ["first"])]
    traced: list[str] = []
    pm.trace.root.setwriter(traced.append)
    undo = pm.enable_tracing()
    try:
        call_on_incoming(HookCalls(pm, "on_incoming"), delivery, handler)
    finally:
        undo()
    assert sum("on_incoming [hook]" in line for line in traced) == 2

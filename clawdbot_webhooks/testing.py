"""Helpers for testing plugins against the real runtime.

``plugin_set_with(*plugins)`` loads the plugin manager with inline plugins added, as if they
were installed; ``serve(webhooks, plugins)`` starts a real server on loopback from a
``webhooks`` config dict and yields a :class:`Served` with ``post(hook, payload)`` and
``idle()``::

    from clawdbot_webhooks.testing import serve

    async def test_my_action(tmp_path):
        async with serve({"handlers": [...]}, [("mine", my_plugin)], state_dir=tmp_path) as srv:
            status, body = await srv.post("hook-id", {"x": 1})
            await srv.idle()
            assert srv.messages()[0]["text"] == "..."
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from clawdbot_webhooks_hookspecs import PROJECT_NAME, derived_event_id, derived_id

from clawdbot_webhooks.config import ConfigError, build_settings, plugin_selection
from clawdbot_webhooks.plugins import PluginError, PluginSelection, PluginSet, load_plugins
from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.web.app import make_app
from clawdbot_webhooks.web.server import AppRunner

__all__ = ["Conformance", "Served", "assert_plugin_conforms", "plugin_set_with", "serve"]

InlinePlugin = tuple[str, object] | object


def _named(plugins: Sequence[InlinePlugin]) -> list[tuple[str, object]]:
    """``(name, plugin)`` pairs; a bare plugin is named by its ``name`` attribute, its module
    name, or its class name, in that order."""
    named: list[tuple[str, object]] = []
    for plugin in plugins:
        if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
            named.append((plugin[0], plugin[1]))
            continue
        name = getattr(plugin, "name", None) or getattr(plugin, "__name__", None)
        named.append((str(name or type(plugin).__name__), plugin))
    return named


def plugin_set_with(*plugins: InlinePlugin, selection: PluginSelection | None = None) -> PluginSet:
    """The plugin manager with the installed plugins, the built-ins and ``plugins`` inline.

    Each inline plugin is a module or an object with ``@hookimpl`` methods, or a
    ``(name, plugin)`` pair; it is registered after the built-ins, exactly as an installed one.
    """
    installed = {ep.name: ep for ep in metadata.entry_points(group=PROJECT_NAME)}
    extra = []
    for name, plugin in _named(plugins):
        ep = installed.get(name)
        # The same plugin also installed (an editable install of the package under test):
        # its entry point registers it already.
        if ep is not None and _loads(ep) is plugin:
            continue
        extra.append((name, plugin))
    return load_plugins(selection, extra)


def _loads(ep: metadata.EntryPoint) -> object:
    try:
        return ep.load()
    except Exception:
        return None


@dataclass
class Served:
    """A running server: its runtime, its address and a client session."""

    runtime: Runtime
    server: TestServer
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        host = self.server.host
        return (
            f"http://[{host}]:{self.server.port}"
            if ":" in host
            else f"http://{host}:{self.server.port}"
        )

    async def post(
        self,
        hook: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """POST ``body`` as JSON (or ``raw`` bytes) to the hook; returns (status, JSON body)."""
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        hdrs = {"Content-Type": content_type, **(headers or {})}
        base = self.runtime.settings.incoming.base_path.rstrip("/")
        async with self.session.post(f"{self.base}{base}/{hook}", data=data, headers=hdrs) as resp:
            return resp.status, await resp.json()

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until every stored incoming delivery has finished (done, dead or dropped) and
        the event bus has notified its plugins."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.runtime.store.count_incoming("pending") == 0:
                await self.runtime.bus.drain(timeout=1)
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"deliveries still pending after {timeout:.1f}s")

    def messages(self) -> list[dict[str, Any]]:
        """What the ``local`` gateway logged: messages sent and the echo agent's answers
        (nothing with another gateway)."""
        logged = getattr(self.runtime.gateway, "messages", None)
        return list(logged()) if callable(logged) else []


class _TestServer(TestServer):
    """aiohttp's ``TestServer`` on the runner ``serve`` uses (JSON answers to malformed
    requests)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return AppRunner(self.app, **kwargs)


def _make_public(raw: dict[str, Any]) -> None:
    incoming = raw.get("incoming")
    if isinstance(incoming, dict) and incoming.get("secret"):
        return
    for handler in raw.get("handlers") or []:
        if isinstance(handler, dict) and not handler.get("secret") and "verify" not in handler:
            handler["verify"] = {"type": "none"}


@contextlib.asynccontextmanager
async def serve(
    webhooks: dict[str, Any],
    plugins: Sequence[InlinePlugin] = (),
    *,
    state_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    public: bool = True,
) -> AsyncIterator[Served]:
    """Start a real server on ``host`` (a free port) from a ``webhooks`` config dict.

    ``stateDir`` defaults to ``state_dir``, or a temporary directory removed afterwards. The
    config goes through the same validation as a config file, so a mistake raises
    ``ConfigError`` with key paths. With ``public`` (the default) a handler with no
    authentication at all is made public (``verify: {type: "none"}``): a test of an action has
    no sender to authenticate. ``public=False`` takes the config exactly as given.
    """
    with contextlib.ExitStack() as stack:
        if state_dir is None and "stateDir" not in webhooks:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-test-"))
            state_dir = Path(scratch) / "state"
        if state_dir is not None:
            webhooks = {"stateDir": str(state_dir), **webhooks}
        raw = json.loads(json.dumps(webhooks))
        if public:
            _make_public(raw)
        plugin_set = plugin_set_with(*plugins, selection=plugin_selection(raw))
        # Relative paths in the config resolve beside the state directory, as they would
        # beside a config file kept next to it.
        source = str(Path(raw["stateDir"]).parent / "config.json5")
        runtime = Runtime(build_settings(raw, plugin_set, source), plugin_set)
        server = _TestServer(make_app(runtime), host=host, port=port)
        await server.start_server()
        session = aiohttp.ClientSession()
        try:
            yield Served(runtime, server, session)
        finally:
            await session.close()
            await server.close()


@dataclass
class Conformance:
    """What ``assert_plugin_conforms`` checked: the plugins it loaded and, per registered name,
    how its exercise ended."""

    plugins: list[str]
    registers: dict[str, list[str]]
    actions: dict[str, str] = field(default_factory=dict)
    transports: dict[str, str] = field(default_factory=dict)
    verifiers: dict[str, str] = field(default_factory=dict)


def _plugins_of(plugin: str | InlinePlugin) -> tuple[list[str], list[InlinePlugin]]:
    """(plugin names, inline plugins): a distribution name means its installed entry points."""
    if isinstance(plugin, str):
        try:
            dist = metadata.distribution(plugin)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"distribution {plugin!r} is not installed") from None
        names = [ep.name for ep in dist.entry_points if ep.group == PROJECT_NAME]
        if not names:
            raise AssertionError(f"distribution {plugin!r} has no {PROJECT_NAME!r} entry point")
        return names, []
    named = _named([plugin])
    return [name for name, _ in named], list(named)


async def assert_plugin_conforms(
    plugin: str | InlinePlugin,
    *,
    actions: Mapping[str, Mapping[str, Any]] | None = None,
    payload: Any = None,
    transports: Mapping[str, str] | None = None,
    verifiers: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    state_dir: str | Path | None = None,
) -> Conformance:
    """Check a plugin the way the runtime will use it, in the plugin's own test suite.

    ``plugin`` is an installed distribution's name (its entry points load as the runtime
    loads them), or a module / object / ``(name, plugin)`` pair registered inline. The plugin
    must load (imports, hook names, every registration valid); then, on a served runtime, each
    action it registers runs once on ``payload`` with the handler options ``actions[name]``
    (default: none) and must end done or dropped; each transport sends one outgoing delivery
    to ``transports[name]`` (default: ``<scheme>:conformance``) and must deliver it; each
    verifier must refuse a request without credentials and, when it can ``sign``, accept a
    signed one and refuse it once the body changed, with the options ``verifiers[name]``.
    ``settings`` become ``webhooks.plugins.settings.<plugin>``. Raises ``AssertionError``
    saying what failed; returns what was checked.
    """
    names, inline = _plugins_of(plugin)
    try:
        loaded = plugin_set_with(*inline)
    except PluginError as exc:
        raise AssertionError(f"the plugin does not load: {exc}") from exc
    for name in names:
        info = loaded.infos.get(name)
        if info is None or not info.enabled:
            raise AssertionError(
                f"plugin {name!r} did not load ({info.reason if info else 'absent'})"
            )
    registers: dict[str, list[str]] = {}
    for name in names:
        for kind, registered in loaded.infos[name].registers.items():
            registers.setdefault(kind, []).extend(registered)
    report = Conformance(names, registers)
    actions, transports, verifiers = actions or {}, transports or {}, verifiers or {}
    handlers: list[dict[str, Any]] = []
    for i, name in enumerate(registers.get("actions", [])):
        handlers.append(
            {
                "id": f"action-{i}",
                "action": name,
                "retry": {"maxAttempts": 1},
                **actions.get(name, {}),
            }
        )
    outgoing = []
    for i, name in enumerate(registers.get("transports", [])):
        schemes = sorted(getattr(loaded.registries.transports[name], "schemes", None) or [name])
        outgoing.append(
            {
                "id": f"transport-{i}",
                "transport": name,
                "url": transports.get(name, f"{schemes[0]}:conformance"),
                "events": ["message_received"],
                "retry": {"maxAttempts": 1},
            }
        )
    trigger = {
        "action": "send_message",
        "template": "conformance",
        "target": {"channel": "conformance", "peer": "conformance"},
    }
    if outgoing:
        handlers.append({"id": "transports", **trigger})
    for i, name in enumerate(registers.get("verifiers", [])):
        handlers.append(
            {"id": f"verifier-{i}", "verify": {"type": name, **verifiers.get(name, {})}, **trigger}
        )
    config: dict[str, Any] = {"handlers": handlers, "outgoing": outgoing}
    if settings is not None:
        config["plugins"] = {"settings": {name: dict(settings) for name in names}}
    body = payload if payload is not None else {"text": "conformance"}
    try:
        server = serve(config, inline, state_dir=state_dir)
        served = await server.__aenter__()
    except ConfigError as exc:
        raise AssertionError(
            "the handlers built for the plugin's registrations do not load (give their "
            "options): " + "; ".join(exc.errors)
        ) from exc
    try:
        await _exercise(served, loaded, registers, body, report)
    finally:
        await server.__aexit__(None, None, None)
    return report


async def _exercise(
    srv: Served, loaded: PluginSet, registers: dict[str, list[str]], body: Any, report: Conformance
) -> None:
    store = srv.runtime.store
    for i, name in enumerate(registers.get("actions", [])):
        status, answer = await srv.post(f"action-{i}", body)
        if status != 202:
            raise AssertionError(f"action {name!r}: the delivery was answered {status}: {answer}")
        await srv.idle()
        record = await store.get_incoming(answer["id"])
        assert record is not None
        if record.status not in ("done", "dropped"):
            raise AssertionError(f"action {name!r} failed: {record.last_error}")
        report.actions[name] = record.status
    if registers.get("transports"):
        status, answer = await srv.post("transports", body)
        if status != 202:
            raise AssertionError(f"the delivery that feeds the transports was answered {status}")
        await srv.idle()
        event_id = derived_event_id(answer["id"], "message_received")
        for i, name in enumerate(registers["transports"]):
            out_id = derived_id("out", event_id, f"transport-{i}")
            report.transports[name] = await _outgoing_outcome(srv, out_id, name)
    for i, name in enumerate(registers.get("verifiers", [])):
        verifier = loaded.registries.verifiers[name]
        hook = f"verifier-{i}"
        raw = json.dumps(body).encode()
        status, _ = await srv.post(hook, raw=raw)
        if status != 401:
            raise AssertionError(
                f"verifier {name!r} accepted a request without credentials ({status})"
            )
        sign = getattr(verifier, "sign", None)
        if callable(sign):
            spec = srv.runtime.settings.routes[hook]
            options = spec.verify.options if spec.verify is not None else {}
            headers = dict(sign(raw, options, int(time.time())))
            status, answer = await srv.post(hook, raw=raw, headers=headers)
            if status != 202:
                raise AssertionError(
                    f"verifier {name!r} refused what its own sign() signed ({status}: {answer})"
                )
            if getattr(verifier, "credential_headers", ()):
                # The secret itself travels (a token): nothing binds the body, by design.
                report.verifiers[name] = "refuses requests without the secret, accepts it"
                continue
            status, _ = await srv.post(hook, raw=raw + b" ", headers=headers)
            if status != 401:
                raise AssertionError(
                    f"verifier {name!r} accepted a body changed after signing ({status}); a "
                    "scheme that sends the secret itself declares it in credential_headers"
                )
            report.verifiers[name] = "refuses unsigned and changed requests, accepts signed ones"
        else:
            report.verifiers[name] = "refuses unsigned requests"
    await srv.idle()


async def _outgoing_outcome(srv: Served, out_id: str, name: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = await srv.runtime.store.get_outgoing(out_id)
        if record is not None and record.status == "done":
            return "done"
        if record is not None and record.status == "dead":
            raise AssertionError(f"transport {name!r} failed: {record.last_error}")
        await asyncio.sleep(0.02)
    raise AssertionError(f"transport {name!r} did not deliver within {timeout:.0f}s")

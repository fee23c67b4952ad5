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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from clawdbot_webhooks_hookspecs import PROJECT_NAME

from clawdbot_webhooks.config import build_settings, plugin_selection
from clawdbot_webhooks.plugins import PluginSelection, PluginSet, load_plugins
from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.web.app import make_app

__all__ = ["Served", "plugin_set_with", "serve"]

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


@contextlib.asynccontextmanager
async def serve(
    webhooks: dict[str, Any],
    plugins: Sequence[InlinePlugin] = (),
    *,
    state_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[Served]:
    """Start a real server on ``host`` (a free port) from a ``webhooks`` config dict.

    ``stateDir`` defaults to ``state_dir``, or a temporary directory removed afterwards. The
    config goes through the same validation as a config file, so a mistake raises
    ``ConfigError`` with key paths.
    """
    with contextlib.ExitStack() as stack:
        if state_dir is None and "stateDir" not in webhooks:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-test-"))
            state_dir = Path(scratch) / "state"
        if state_dir is not None:
            webhooks = {"stateDir": str(state_dir), **webhooks}
        raw = json.loads(json.dumps(webhooks))
        plugin_set = plugin_set_with(*plugins, selection=plugin_selection(raw))
        # Relative paths in the config resolve beside the state directory, as they would
        # beside a config file kept next to it.
        source = str(Path(raw["stateDir"]).parent / "config.json5")
        runtime = Runtime(build_settings(raw, plugin_set, source), plugin_set)
        server = TestServer(make_app(runtime), host=host, port=port)
        await server.start_server()
        session = aiohttp.ClientSession()
        try:
            yield Served(runtime, server, session)
        finally:
            await session.close()
            await server.close()

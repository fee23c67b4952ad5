"""Starting and closing the objects plugins registered (actions, transports).

An object that keeps state between deliveries defines ``async def start(env)`` and
``async def close()``. Each call is isolated: a plugin whose ``start`` fails is logged with its
name and the runtime starts anyway; its deliveries then fail down their own failure path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import Event, Gateway, PluginEnv

from clawdbot_webhooks.plugins import Registries

log = logging.getLogger(__name__)

#: The registries whose objects may have ``start`` / ``close``, in start order.
KINDS = ("transports", "actions")


def _objects(registries: Registries) -> Iterator[tuple[str, str, str, Any]]:
    """(kind, name, owner, object), each object once even when registered under two names."""
    seen: set[int] = set()
    for kind in KINDS:
        registry = registries.of(kind)
        for name, item in registry.items():
            if id(item) in seen:
                continue
            seen.add(id(item))
            yield kind, name, registry.owners[name], item


async def start_objects(
    registries: Registries,
    *,
    settings: Mapping[str, Mapping[str, Any]],
    state_dir: str,
    gateway: Gateway,
    http: Any,
    publish: Callable[[Event], Awaitable[None]],
) -> None:
    for kind, name, owner, item in _objects(registries):
        start = getattr(item, "start", None)
        if start is None or not callable(start):
            continue
        env = PluginEnv(
            plugin=owner,
            settings=settings.get(owner, {}),
            state_dir=state_dir,
            gateway=gateway,
            http=http,
            publish=publish,
            logger=logging.getLogger(f"clawdbot_webhooks.plugin.{owner}"),
        )
        try:
            await start(env)
        except Exception:
            log.exception("plugin %r failed to start %s %r", owner, kind[:-1], name)


async def close_objects(registries: Registries, kinds: tuple[str, ...] = KINDS) -> None:
    for kind, name, owner, item in _objects(registries):
        if kind not in kinds:
            continue
        close = getattr(item, "close", None)
        if close is None or not callable(close):
            continue
        try:
            await close()
        except Exception:
            log.exception("plugin %r failed to close %s %r", owner, kind[:-1], name)

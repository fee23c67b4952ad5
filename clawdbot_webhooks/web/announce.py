"""What ``serve`` logs once it listens: a line per listener (webhooks, admin, event ingress),
the gateway, the storage and the plugins, with every credential masked."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from clawdbot_webhooks.credentials import mask_url
from clawdbot_webhooks.logs import MASK, SENSITIVE
from clawdbot_webhooks.runtime import Runtime


def http_address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_lines(runtime: Runtime, app: web.Application, listening: str, loop: str) -> list[str]:
    """The lines, each one line; ``listening`` is the webhook listener's bound address."""
    settings = runtime.settings
    incoming = settings.incoming
    handlers = ", ".join(sorted(h.handler.id for h in settings.handlers)) or "none"
    intake = (
        f"POST {incoming.base_path.rstrip('/')}/<hook-id> (handlers: {handlers}; "
        if incoming.enabled
        else "no webhooks taken: incoming.enabled is false ("
    )
    lines = [f"webhooks listener on {listening}: {intake}event loop: {loop})"]
    if settings.admin.enabled:
        from clawdbot_webhooks.web.admin import ADMIN_LISTENER

        own = app.get(ADMIN_LISTENER)
        where = (
            f"admin listener on {http_address(own.host, own.port)}"
            if own is not None
            else f"admin on the webhooks listener {listening}"
        )
        lines.append(f"{where}: API /admin/api/, dashboard /admin/")
    if incoming.event_ingress is not None:
        lines.append(f"event ingress on the webhooks listener {listening}: POST /events/ingest")
    lines.append(gateway_line(runtime))
    lines.append(storage_line(runtime))
    lines.append(plugins_line(runtime))
    return lines


def gateway_line(runtime: Runtime) -> str:
    """Its type, where it connects (a URL masked, or a file), and which credentials it has
    (never their values)."""
    gateway: Any = runtime.gateway
    options = getattr(gateway, "options", None)
    if not isinstance(options, dict):
        options = dict(runtime.settings.gateway.options)
    where = next(
        (
            value
            for value in (getattr(gateway, "url", None), options.get("url"))
            if isinstance(value, str) and value
        ),
        None,
    )
    path = getattr(gateway, "path", None)
    line = f"gateway {runtime.settings.gateway.type}"
    if where is not None:
        line += f" at {mask_url(where)}"
    elif path is not None:
        line += f" at {path}"
    secrets = sorted(k for k, v in options.items() if v and SENSITIVE.search(str(k)))
    if secrets:
        line += " (" + ", ".join(f"{key} {MASK}" for key in secrets) + ")"
    return line


def storage_line(runtime: Runtime) -> str:
    storage = runtime.settings.storage
    backend, _, rest = storage.url.partition("://")
    where = rest[1:] if backend == "sqlite" else mask_url(storage.url)
    line = f"storage {backend} at {where}"
    if storage.schema:
        line += f" (schema {storage.schema})"
    return line


def plugins_line(runtime: Runtime) -> str:
    infos = sorted(runtime.plugins.infos.values(), key=lambda i: i.name)
    on = [i for i in infos if i.enabled]
    installed = [f"{i.name} {i.version}" if i.version else i.name for i in on if not i.builtin]
    parts = [", ".join(installed) or "no installed ones"]
    builtin = [i for i in on if i.builtin]
    if builtin:
        version = f" {builtin[0].version}" if builtin[0].version else ""
        parts.append(f"built-in{version}: " + ", ".join(i.name for i in builtin))
    off = [i.name for i in infos if not i.enabled]
    if off:
        parts.append("disabled: " + ", ".join(off))
    return "plugins loaded: " + "; ".join(parts)

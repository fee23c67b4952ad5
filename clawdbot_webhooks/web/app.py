"""The incoming HTTP server (aiohttp): routes, status codes and error bodies of DESIGN §5.

A request goes: method (405) → client address (403) → per-address rate limit (429) → route
(404) → authentication-failure throttle (429) → body within the limit and the read timeout
(413/408) → authentication (401) → content type and parsing (415/400) → handler rate limit and
``maxPending`` (429) → duplicate check (200) → stored durably (503 when that fails) → 202, and
the pipeline takes it from there. The handler's limit comes after authentication so that
nobody without the secret can use up a sender's allowance.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError, new_id

from clawdbot_webhooks import jsontext
from clawdbot_webhooks.config import HandlerSpec
from clawdbot_webhooks.logs import quiet_malformed_requests
from clawdbot_webhooks.metrics import UNKNOWN_HOOK, metrics_view
from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.sessions import ephemeral_session
from clawdbot_webhooks.store import IncomingRecord, StoreUnavailable
from clawdbot_webhooks.store.dedup import dedup_key
from clawdbot_webhooks.templates import context_for
from clawdbot_webhooks.web.errors import add_no_route, error, json_errors
from clawdbot_webhooks.web.ratelimit import Limits, retry_after
from clawdbot_webhooks.web.requests import (
    Rejected,
    client_ip,
    ip_allowed,
    parse_content,
    read_body,
    stored_headers,
)

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
LIMITS = web.AppKey("limits", Limits)


def _too_many(seconds: float, message: str) -> Rejected:
    return Rejected(429, message, {"Retry-After": retry_after(seconds)})


def _verify(rt: Runtime, spec: HandlerSpec, request: web.Request, body: bytes, ip: str) -> str:
    """Authenticate; returns the sender's delivery id when the scheme carries one.

    ``spec.verify`` names the verifier and holds its loaded options; the config puts the
    shared secret there when a handler has no ``verify`` of its own."""
    if spec.verify is None:
        return ""
    name, options = spec.verify.type, spec.verify.options
    signed = SignedRequest(
        method=request.method,
        path=request.path,
        headers=request.headers,  # case-insensitive already: no copy per request
        body=body,
        client_ip=ip,
        now=time.time(),
    )
    try:
        return rt.plugins.registries.verifiers[name].verify(signed, options) or ""
    except VerificationError as exc:
        raise Rejected(401, str(exc)) from exc


async def receive(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    hook_id = request.match_info["hook_id"]
    spec = rt.settings.routes.get(hook_id)
    hook = UNKNOWN_HOOK if spec is None else spec.handler.id
    try:
        if request.method != "POST":
            raise Rejected(405, f"method {request.method} not allowed; use POST", {"Allow": "POST"})
        if spec is None:
            # Still checked first: an address that may not send learns nothing of the routes.
            _admit(rt, request)
            shown = hook_id if len(hook_id) <= 80 else hook_id[:80] + "..."
            raise Rejected(404, f"no handler for hook {shown!r}")
        response = await _accept(rt, spec, request)
    except Rejected as exc:
        response = error(exc.status, exc.message, exc.headers)
    except Exception:
        rt.metrics.request(hook, 500)  # aiohttp answers it
        raise
    # Counted here, not in a middleware: see ``json_errors``.
    rt.metrics.request(hook, response.status)
    return response


def _admit(rt: Runtime, request: web.Request) -> str:
    """The client's address, once it may send at all (403) and is within its rate (429)."""
    incoming = rt.settings.incoming
    ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), incoming.trusted_proxies)
    if not ip_allowed(ip, incoming.allowed_ips):
        raise Rejected(403, f"client address {ip} is not allowed")
    wait = request.app[LIMITS].client(ip)
    if wait:
        raise _too_many(wait, "too many requests from this address")
    return ip


async def _accept(rt: Runtime, spec: HandlerSpec, request: web.Request) -> web.Response:
    ip = _admit(rt, request)
    incoming = rt.settings.incoming
    limits = request.app[LIMITS]
    if not rt.accepting:
        raise Rejected(503, "shutting down; try again shortly", {"Retry-After": "5"})
    wait = limits.auth_blocked(ip)
    if wait:
        raise _too_many(wait, "too many failed authentication attempts from this address")
    body = await read_body(request, incoming.max_body_bytes, incoming.read_timeout)
    try:
        sender_id = _verify(rt, spec, request, body, ip)
    except Rejected:
        limits.auth_failed(ip)
        raise
    raw_type = request.headers.get("Content-Type", "")
    payload = parse_content(body, raw_type, max_depth=incoming.max_json_depth)
    wait = limits.handler(spec.handler.id)
    if wait:
        raise _too_many(wait, f"rate limit of hook {spec.handler.id!r} reached")
    assert rt.pipeline is not None  # set while accepting
    pending = rt.pipeline.in_flight(spec.handler.id)
    if spec.max_pending is not None and pending >= spec.max_pending:
        raise _too_many(1, f"hook {spec.handler.id!r} has {pending} deliveries waiting")
    headers = stored_headers(request.headers, spec.credential_headers)
    window = incoming.dedup_window
    dedup = dedup_key(sender_id, headers) if window > 0 else None
    record = IncomingRecord(
        id=new_id("dlv"),
        hook_id=spec.handler.id,
        received_at=time.time(),
        content_type=raw_type,
        body=body,
        headers=headers,
        query=dict(request.query) if request.query_string else {},
        client_ip=ip,
        session="",
        dedup_key=dedup,
    )
    record.session = _session_for(spec, record, payload)
    try:
        stored, waiter = await rt.pipeline.accept(
            record,
            payload,
            sync=spec.handler.mode == "sync",
            dedup_since=record.received_at - window,
        )
        original = None if stored else await rt.store.find_duplicate(spec.handler.id, dedup or "")
    except StoreUnavailable as exc:
        log.error("delivery to %s refused: %s", spec.handler.id, exc)
        raise Rejected(
            503, "storage unavailable; nothing was accepted", {"Retry-After": "5"}
        ) from exc
    if not stored:
        return web.json_response({"ok": True, "duplicate": True, "id": original}, status=200)
    answer: dict[str, Any] = {"ok": True, "id": record.id, "session": record.session}
    if waiter is not None:
        try:
            answer["result"] = await asyncio.wait_for(asyncio.shield(waiter), spec.sync_timeout)
            return web.json_response(answer, status=200, dumps=jsontext.readable)
        except TimeoutError:
            answer["pending"] = True
        except Exception as exc:
            answer["error"] = str(exc)
    return web.Response(body=jsontext.encode(answer), status=202, content_type="application/json")


def _session_for(spec: HandlerSpec, record: IncomingRecord, payload: Any) -> str:
    if not spec.persistent or spec.session_key is None:
        return ephemeral_session()
    try:
        context = context_for(record.as_delivery(payload), spec.handler)
        key = str(spec.session_key.render(context)).strip()
    except Exception as exc:
        raise Rejected(400, f"sessionKey template failed for this payload: {exc}") from exc
    if not key:
        raise Rejected(400, "sessionKey template rendered empty for this payload")
    return key


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    checks: dict[str, str] = {}
    try:
        await rt.store.count_incoming("pending")
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"unavailable: {exc}"
    health = rt.metrics.gateway_health
    if health is not None:
        ok, detail = await health.check()
        checks["gateway"] = "ok" if ok else detail
    ready = rt.accepting and all(v == "ok" for v in checks.values())
    return web.json_response({"ok": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return await metrics_view(request.app[RUNTIME])


def make_app(runtime: Runtime) -> web.Application:
    """The app factory. The runtime starts with the app and stops after the server has
    stopped taking requests and finished the ones in flight."""
    incoming = runtime.settings.incoming
    quiet_malformed_requests()
    app = web.Application(client_max_size=incoming.max_body_bytes + 1)
    app[RUNTIME] = runtime
    app[LIMITS] = Limits(
        incoming, ((h.handler.id, h.rate_limit) for h in runtime.settings.handlers)
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.stop()

    async def stop_accepting(app: web.Application) -> None:
        runtime.accepting = False

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(stop_accepting)
    base = incoming.base_path.rstrip("/")
    app.router.add_route("*", base + "/{hook_id:[^{}]+}", receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if runtime.settings.admin.enabled:
        from clawdbot_webhooks.web.admin import setup_admin

        setup_admin(app, runtime)
    if incoming.event_ingress is not None:
        from clawdbot_webhooks.web.event_ingress import ingest

        app.router.add_post("/events/ingest", json_errors(ingest))
    add_no_route(app)
    return app


#: Net allocations between young collections (Python's default: 700). Each one walks every
#: young object still alive, which under load is every delivery in flight (its task,
#: coroutines, records): at 700 that was about 6 % of an outgoing delivery's instructions.
#: Garbage in reference cycles, which only the collector frees, is rare here and small.
YOUNG_COLLECTION_EVERY = 10_000


def tune_collector() -> None:
    """For a long-running server, once everything is loaded (config, plugins, templates, the
    runtime): move that out of the garbage collector's sight, since it lives as long as the
    process and a full collection would otherwise walk all of it again and again under load;
    and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)


async def _tune_collector(app: web.Application) -> None:
    tune_collector()


def serve(
    runtime: Runtime, host: str, port: int, loop: asyncio.AbstractEventLoop | None = None
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; on ``loop`` when given (the CLI
    passes one of ``eventloop``'s choosing), else on a new asyncio loop."""
    app = make_app(runtime)
    app.on_startup.append(_tune_collector)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        shutdown_timeout=runtime.settings.incoming.shutdown_timeout,
        print=lambda text: log.info("%s", text.strip()),
        handle_signals=True,
        loop=loop,
    )

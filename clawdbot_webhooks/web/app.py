"""The HTTP server (aiohttp): the app and its routes, health and readiness, metrics, and
``serve``. Webhooks themselves are taken by ``web.receive``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from clawdbot_webhooks.config import Settings
from clawdbot_webhooks.eventloop import loop_name
from clawdbot_webhooks.logs import quiet_malformed_requests
from clawdbot_webhooks.metrics import CONTENT_TYPE
from clawdbot_webhooks.reload import Reloader
from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.web.announce import http_address, start_lines
from clawdbot_webhooks.web.deadlines import Deadlines
from clawdbot_webhooks.web.errors import add_no_route, json_errors
from clawdbot_webhooks.web.keys import INGRESS, RUNTIME, WEBHOOK_ROUTE, Ingress
from clawdbot_webhooks.web.outage import StoreOutage, describe, within
from clawdbot_webhooks.web.ratelimit import Limits
from clawdbot_webhooks.web.receive import receive
from clawdbot_webhooks.web.server import AppRunner

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """200 when the store and the gateway answer, within ``incoming.storeTimeout``. After a
    failed write the store must take a write, not just answer a read: a full disk or a lock
    held from outside leaves reads working while every webhook is refused."""
    rt = request.app[RUNTIME]
    outage = request.app[INGRESS].outage
    bound = rt.settings.incoming.store_timeout
    checks: dict[str, str] = {}
    try:
        if outage.down:
            await within(rt.store.probe_write(), bound)
            outage.succeeded()
        else:
            await within(rt.store.count_incoming("pending"), bound)
        checks["store"] = "ok"
    except TimeoutError:
        checks["store"] = f"unavailable: no answer within {bound:g}s"
    except Exception as exc:
        checks["store"] = f"unavailable: {describe(exc)}"
    if outage.down and checks["store"] == "ok":
        checks["store"] = f"unavailable: {outage.reason}"
    try:
        ok, detail = await within(rt.gateway_health.check(), bound)
        checks["gateway"] = "ok" if ok else detail
    except TimeoutError:
        checks["gateway"] = f"no answer within {bound:g}s"
    ready = rt.accepting and all(v == "ok" for v in checks.values())
    return web.json_response({"ok": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    measured = request.app[RUNTIME].metrics
    await measured.refresh()
    return web.Response(body=measured.render(), headers={"Content-Type": CONTENT_TYPE})


def make_app(runtime: Runtime) -> web.Application:
    """The app factory. The runtime starts with the app and stops after the server has
    stopped taking requests and finished the ones in flight."""
    incoming = runtime.settings.incoming
    quiet_malformed_requests()
    app = web.Application(client_max_size=incoming.max_body_bytes + 1)
    app[RUNTIME] = runtime
    limits = Limits(incoming, ((h.handler.id, h.rate_limit) for h in runtime.settings.handlers))
    ingress = app[INGRESS] = Ingress(limits, StoreOutage(), Deadlines())

    def applied(settings: Settings) -> None:
        limits.configure(
            settings.incoming, ((h.handler.id, h.rate_limit) for h in settings.handlers)
        )

    reloader = runtime.reloader = Reloader(runtime, applied)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        reloader.start()
        yield
        await reloader.stop()
        await runtime.stop()

    async def stop_accepting(app: web.Application) -> None:
        runtime.begin_drain()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(stop_accepting)
    base = incoming.base_path.rstrip("/")
    if incoming.enabled:  # off: the listener serves the rest (health, metrics, admin), no webhook
        app[WEBHOOK_ROUTE] = app.router.add_route(
            "*", base + "/{hook_id:[^{}]+}", functools.partial(receive, runtime, ingress)
        )
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
#: delivery in flight, so the default spends a measurable share of the time there
#: (``bench/README.md``); garbage in reference cycles is rare here and small.
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
    passes one of ``eventloop``'s choosing), else on a new asyncio loop. What
    ``web.run_app`` does, on the runner whose connections answer malformed requests in JSON
    (``web.server``)."""
    loop = loop or asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_run(make_app(runtime), runtime, host, port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _run(app: web.Application, runtime: Runtime, host: str, port: int) -> None:
    app.on_startup.append(_tune_collector)
    runner = AppRunner(
        app,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=runtime.settings.incoming.shutdown_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        listening = http_address(str(bound_host), int(bound_port))
        for line in start_lines(runtime, app, listening, loop_name(asyncio.get_running_loop())):
            log.info("%s", line)
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()

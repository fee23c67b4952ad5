"""The admin API (``/admin/api``) and the delivery dashboard (``/admin/``).

Off unless ``webhooks.admin.enabled``. Without ``admin.port`` both are routes of the webhook
listener; with a port of their own they are a second aiohttp app in the same process, started
and stopped with the first (so the public listener can face the internet while the admin one
stays on a private address).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.web.admin import api
from clawdbot_webhooks.web.admin.auth import AUTH, REDACTOR, AdminAuth
from clawdbot_webhooks.web.admin.chain import BadRequest
from clawdbot_webhooks.web.admin.dashboard import add_routes as add_dashboard_routes
from clawdbot_webhooks.web.admin.openapi import spec
from clawdbot_webhooks.web.errors import add_no_route, json_errors
from clawdbot_webhooks.web.server import AppRunner

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AdminListener:
    """Where the admin app of its own listens (``port`` known once it has started)."""

    host: str
    port: int


ADMIN_LISTENER = web.AppKey("admin_listener", AdminListener)

#: (method, path, handler): the whole admin API; the OpenAPI test checks it against ``spec``.
API_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/admin/api/incoming", api.list_incoming),
    ("GET", "/admin/api/incoming/{id}", api.show_incoming),
    ("POST", "/admin/api/incoming/{id}/replay", api.replay_incoming),
    ("GET", "/admin/api/outgoing", api.list_outgoing),
    ("GET", "/admin/api/outgoing/{id}", api.show_outgoing),
    ("POST", "/admin/api/outgoing/{id}/replay", api.replay_outgoing),
    ("GET", "/admin/api/events", api.list_events),
    ("GET", "/admin/api/events/{id}", api.show_event),
    # Ids and keys arrive percent-decoded (a session key's ``:``, a ``/`` sent as %2F).
    ("GET", "/admin/api/sessions/{key}", api.show_session),
    ("GET", "/admin/api/dead-letters", api.list_dead),
    ("DELETE", "/admin/api/dead-letters", api.purge_dead),
    ("POST", "/admin/api/dead-letters/replay", api.replay_dead),
    ("DELETE", "/admin/api/dead-letters/{id}", api.purge_dead_one),
    ("POST", "/admin/api/dead-letters/{id}/replay", api.replay_dead_one),
    ("GET", "/admin/api/handlers", api.list_handlers),
    ("GET", "/admin/api/subscriptions", api.list_subscriptions),
    ("GET", "/admin/api/plugins", api.list_plugins),
    ("GET", "/admin/api/config", api.config_status),
    ("GET", "/admin/api/stats/endpoints", api.stats_endpoints),
    ("GET", "/admin/api/stats/throughput", api.stats_throughput),
]


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        refused = request.config_dict[AUTH].api_allowed(request)
        if refused is not None:
            denied = api.fail(401, refused)
            denied.headers["WWW-Authenticate"] = 'Bearer realm="clawdbot-webhooks admin"'
            return denied
        try:
            response = await handler(request)
        except BadRequest as exc:
            return api.fail(400, str(exc))
        # Stored errors and responses may quote a secret (a plugin's exception, an echoing
        # endpoint): the admin API shows them masked, as the logs do.
        if isinstance(response, web.Response) and response.text is not None:
            response.text = request.config_dict[REDACTOR].redact(response.text)
        return response

    return guarded


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec())


def add_routes(app: web.Application, runtime: Runtime) -> None:
    token = runtime.settings.admin.token
    assert token, "the config requires admin.token when admin is enabled"
    app[AUTH] = AdminAuth(token)
    app[REDACTOR] = runtime.redactor
    app[api.RUNTIME] = runtime
    router = app.router
    router.add_get("/admin/api/openapi.json", json_errors(_guarded(openapi_json)))
    for method, path, handler in API_ROUTES:
        router.add_route(method, path, json_errors(_guarded(handler)))
    add_dashboard_routes(router)


def setup_admin(app: web.Application, runtime: Runtime) -> None:
    """Mount the admin routes on ``app``, or start them on a listener of their own."""
    admin = runtime.settings.admin
    incoming = runtime.settings.incoming
    port = admin.port
    if port is None or (port == incoming.port and admin.host == incoming.host):
        add_routes(app, runtime)
        return
    admin_app = web.Application()
    add_routes(admin_app, runtime)
    add_no_route(admin_app)
    listener = app[ADMIN_LISTENER] = AdminListener(admin.host, port)

    async def run(app: web.Application) -> AsyncIterator[None]:
        runner = AppRunner(admin_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, listener.host, listener.port).start()
        listener.port = int(runner.addresses[0][1])
        try:
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.append(run)

"""The delivery dashboard: server-rendered pages (Jinja2, autoescaped) and plain JavaScript
that reads the admin API: the delivery list (filters kept in the URL, pages, live updates,
bulk replay), the Replay buttons and the throughput chart. A login form trades the admin token
for an HttpOnly cookie (see ``auth``); the token never appears in a URL or in the browser's
storage."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from clawdbot_webhooks.web.admin import api, chain
from clawdbot_webhooks.web.admin.auth import AUTH, COOKIE, CSRF_VALUE, REDACTOR
from clawdbot_webhooks.web.errors import json_errors

STATIC = {
    "admin.js": "text/javascript",
    "deliveries.js": "text/javascript",
    "admin.css": "text/css",
}
#: Pages allow nothing from elsewhere, no inline script, and no framing.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: The time ranges the filter offers (any value the API takes works in the URL too).
SINCE = {"15m": "last 15 minutes", "1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days"}


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _when_parts(epoch: float | None) -> Markup:
    """``_when`` that may wrap between the date and the time (narrow table columns)."""
    day, _, clock = _when(epoch).partition(" ")
    if not clock:
        return Markup(escape(day))
    return Markup('<span class="nowrap">{}</span> <span class="nowrap">{}</span>').format(
        day, clock
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("clawdbot_webhooks.web.admin", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters.update(when=_when, when_parts=_when_parts, percent=_percent, pretty=_pretty)


def render(name: str, status: int = 200, redact: Any = None, **context: Any) -> web.Response:
    html = _ENV.get_template(name).render(csrf=CSRF_VALUE, **context)
    if redact is not None:
        html = redact(html)
    return web.Response(text=html, content_type="text/html", status=status, headers=HEADERS)


def _signed_in(request: web.Request) -> bool:
    auth = request.config_dict[AUTH]
    return auth.cookie_ok(request) or auth.bearer_ok(request)


def _to_login() -> web.Response:
    return web.Response(status=303, headers={"Location": "/admin/login", **HEADERS})


def _filters(request: web.Request) -> dict[str, str]:
    """The list's filters as the URL gives them, for the form to show (the script reads the
    form, so a linked or reloaded view lists the same)."""
    query = request.query
    kind = query.get("kind", "")
    status = query.get("status", "")
    limit = query.get("limit", "")
    return {
        "kind": kind if kind in api.KINDS else "",
        "status": status if status in api.STATUSES else "",
        "target": query.get("target", "")[:200],
        "since": query.get("since", "")[:40],
        "q": query.get("q", "")[:200],
        # The page size, when the URL gives one: kept across a change of filter.
        "limit": limit if limit.isdigit() and len(limit) <= 3 else "",
    }


def _recovered(row: dict[str, Any]) -> dict[str, Any]:
    error_at, success_at = row.get("last_error_at"), row.get("last_success_at")
    return {**row, "recovered": bool(error_at and success_at and success_at >= error_at)}


async def index(request: web.Request) -> web.Response:
    if not _signed_in(request):
        return _to_login()
    rt = api.runtime_of(request)
    health = await api.endpoint_health(rt)
    counts = await rt.store.queue_counts()
    filters = _filters(request)
    since = dict(SINCE)
    if filters["since"] and filters["since"] not in since:
        since[filters["since"]] = f"since {filters['since']}"
    return render(
        "index.html",
        redact=request.config_dict[REDACTOR].redact,
        filters=filters,
        statuses=api.STATUSES,
        since_choices=since,
        dead_count=counts["incoming_dead"] + counts["outgoing_dead"],
        handlers=[_recovered(h) for h in health["handlers"]],
        subscriptions=[_recovered(s) for s in health["subscriptions"]],
        now=time.time(),
    )


async def delivery(request: web.Request) -> web.Response:
    if not _signed_in(request):
        return _to_login()
    rt = api.runtime_of(request)
    found = await api.find_delivery(rt, request.match_info["id"])
    if found is None:
        return render("missing.html", status=404, message=f"No delivery {request.match_info['id']}")
    return render("delivery.html", redact=request.config_dict[REDACTOR].redact, d=found)


async def chain_page(request: web.Request) -> web.Response:
    """An incoming delivery, its attempts, the events it caused and each one's outgoing
    deliveries; for an outgoing delivery, the chain it belongs to."""
    if not _signed_in(request):
        return _to_login()
    rt = api.runtime_of(request)
    wanted = request.match_info["id"]
    found = await api.find_delivery(rt, wanted)
    if found is not None and found["kind"] == "outgoing" and found["causation"]:
        found = await api.find_delivery(rt, found["causation"]) or found
    if found is None:
        return render("missing.html", status=404, message=f"No delivery {wanted}")
    if found["kind"] == "incoming":
        root, caused = found, found["caused"]
    else:  # an event nothing incoming caused: the chain starts at the event
        event = await rt.store.get_event(found["event_id"])
        root, caused = None, [] if event is None else [await chain.event_view(rt, event)]
    return render(
        "chain.html",
        redact=request.config_dict[REDACTOR].redact,
        d=root,
        caused=caused,
        root_id=wanted,
        current=wanted,
    )


async def session_page(request: web.Request) -> web.Response:
    """A session's incoming deliveries, events and outgoing deliveries in time order."""
    if not _signed_in(request):
        return _to_login()
    key = request.query.get("key", "")
    if not key:
        return render("missing.html", status=404, message="No session given")
    try:
        page = await chain.session_page(api.runtime_of(request), key, request)
    except chain.BadRequest as exc:
        return render("missing.html", status=400, message=str(exc))
    return render(
        "session.html",
        redact=request.config_dict[REDACTOR].redact,
        key=key,
        items=page["items"],
        next_cursor=page["next_cursor"],
        cursor=request.query.get("cursor"),
        # A page size the URL gives stays with the pages that follow.
        more="&limit=" + request.query["limit"] if request.query.get("limit", "").isdigit() else "",
    )


async def login_form(request: web.Request) -> web.Response:
    return render("login.html", error=None)


async def login(request: web.Request) -> web.Response:
    auth = request.config_dict[AUTH]
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not auth.token_matches(token):
        return render("login.html", status=401, error="That is not the admin token.")
    response = web.Response(status=303, headers={"Location": "/admin/", **HEADERS})
    auth.set_cookie(response, secure=request.secure)
    return response


async def logout(request: web.Request) -> web.Response:
    response = web.Response(status=303, headers={"Location": "/admin/login", **HEADERS})
    response.del_cookie(COOKIE, path="/admin")
    return response


async def to_index(request: web.Request) -> web.Response:
    return web.Response(status=301, headers={"Location": "/admin/"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("clawdbot_webhooks.web.admin").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        headers={
            "Content-Type": STATIC[name],
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin", json_errors(to_index))
    router.add_get("/admin/", json_errors(index))
    router.add_get("/admin/deliveries/{id}", json_errors(delivery))
    router.add_get("/admin/chain/{id}", json_errors(chain_page))
    router.add_get("/admin/session", json_errors(session_page))
    router.add_get("/admin/login", json_errors(login_form))
    router.add_post("/admin/login", json_errors(login))
    router.add_post("/admin/logout", json_errors(logout))
    router.add_get("/admin/static/{name}", json_errors(static))

"""The admin API's handlers (``/admin/api/...``) and the views of deliveries they share with
the dashboard. Every answer is JSON; every error ``{"ok": false, "error": ...}``."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from clawdbot_webhooks import jsontext
from clawdbot_webhooks.credentials import mask_url
from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.store import (
    DeliveryQuery,
    DeliverySummary,
    IncomingRecord,
    OutgoingRecord,
    attempts_made,
)
from clawdbot_webhooks.templates import context_for, is_trusted, trusted_context
from clawdbot_webhooks.web.admin import chain
from clawdbot_webhooks.web.admin.chain import BadRequest, Holds
from clawdbot_webhooks.web.requests import parse_content

RUNTIME = web.AppKey("admin_runtime", Runtime)
KINDS = ("incoming", "outgoing")
STATUSES = ("pending", "done", "dropped", "dead")
#: The throughput chart: at most this many buckets.
MAX_BUCKETS = 1440


def fail(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


def runtime_of(request: web.Request) -> Runtime:
    return request.config_dict[RUNTIME]


# ---------------------------------------------------------------------------- query parsing


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name}: not a number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low:g} and {high:g}")
    return value


def _since(request: web.Request, name: str = "since") -> float | None:
    from clawdbot_webhooks.cli.support import parse_time

    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return parse_time(raw)
    except Exception:
        raise BadRequest(
            f"{name}: expected an ISO 8601 time, epoch seconds or a duration like 2h"
        ) from None


def delivery_query(request: web.Request, kind: str) -> DeliveryQuery:
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: one of {', '.join(STATUSES)}")
    target_key = "hook" if kind == "incoming" else "subscription"
    cursor = request.query.get("cursor")
    return DeliveryQuery(
        status=status,
        target=request.query.get(target_key) or None,
        since=_since(request),
        search=(request.query.get("q") or "").strip()[:200] or None,
        cursor=chain.listing_cursor(cursor) if cursor else None,
        limit=chain.page_limit(request),
    )


# ---------------------------------------------------------------------------- views


def summary_view(s: DeliverySummary) -> dict[str, Any]:
    view = asdict(s)
    view["hook" if s.kind == "incoming" else "subscription"] = s.target
    if s.kind == "incoming":
        view.pop("event_type")
        view.pop("causation")
    return view


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _parsed(body: bytes, content_type: str) -> Any:
    try:
        return parse_content(body, content_type)
    except Exception:
        return None


def rendered_templates(rt: Holds, record: IncomingRecord) -> dict[str, str]:
    """The handler's templates rendered for this delivery now (what its action would get)."""
    spec = rt.settings.routes.get(record.hook_id)
    if spec is None or not spec.templates:
        return {}
    payload = spec.presented(_parsed(record.body, record.content_type))
    delivery = record.as_delivery(payload)
    context = context_for(delivery, spec.handler)
    trusted = trusted_context(delivery, spec.handler, spec.persistent)
    out: dict[str, str] = {}
    for path, template in spec.templates.items():
        try:
            out[".".join(path)] = str(template.render(trusted if is_trusted(path) else context))
        except Exception as exc:  # the same errors the action would meet
            out[".".join(path)] = f"(template failed: {exc})"
    return out


async def incoming_view(rt: Holds, r: IncomingRecord) -> dict[str, Any]:
    history = await rt.store.attempts(r.id)
    return {
        "kind": "incoming",
        "id": r.id,
        "hook": r.hook_id,
        "status": r.status,
        "attempts": attempts_made("incoming", r.status, r.attempts, len(history)),
        "created_at": r.received_at,
        "next_attempt_at": r.next_attempt_at,
        "last_error": r.last_error,
        "session": r.session,
        "content_type": r.content_type,
        "client_ip": r.client_ip,
        "headers": r.headers,
        "query": r.query,
        "payload": _text(r.body),
        "payload_json": _parsed(r.body, r.content_type),
        "result": r.result,
        "rendered": rendered_templates(rt, r),
        "history": [asdict(a) for a in history],
        "caused": await chain.caused(rt, r),
    }


async def outgoing_view(rt: Holds, r: OutgoingRecord) -> dict[str, Any]:
    sub = next((s for s in rt.settings.outgoing if s.id == r.subscription_id), None)
    history = await rt.store.attempts(r.id)
    event = await rt.store.get_event(r.event_id)
    return {
        "kind": "outgoing",
        "id": r.id,
        "subscription": r.subscription_id,
        "url": None if sub is None else mask_url(sub.url),
        "event_id": r.event_id,
        "event_type": r.event_type,
        "status": r.status,
        "attempts": attempts_made("outgoing", r.status, r.attempts, len(history)),
        "created_at": r.created_at,
        "next_attempt_at": r.next_attempt_at,
        "last_error": r.last_error,
        "session": r.session,
        "causation": r.causation,
        "event": None
        if event is None
        else {k: v for k, v in chain.event_summary(event).items() if k != "session"},
        "payload": _text(r.payload),
        "history": [asdict(a) for a in history],
    }


async def find_delivery(rt: Holds, delivery_id: str) -> dict[str, Any] | None:
    out = await rt.store.get_outgoing(delivery_id)
    if out is not None:
        return await outgoing_view(rt, out)
    inc = await rt.store.get_incoming(delivery_id)
    return None if inc is None else await incoming_view(rt, inc)


async def endpoint_health(rt: Runtime, window: float = 86_400.0) -> dict[str, list[dict[str, Any]]]:
    """Per hook and subscription: deliveries by status in ``window``, success rate, last
    error and last success, and for subscriptions the circuit breaker."""
    stats = {
        (e["kind"], e["target"]): e for e in await rt.store.delivery_stats(time.time() - window)
    }
    breakers = rt.breakers.states()

    def row(kind: str, target: str, **more: Any) -> dict[str, Any]:
        e = stats.get((kind, target)) or {"statuses": {}, "attempts": 0, "succeeded": 0}
        statuses: dict[str, int] = e["statuses"]
        finished = sum(n for s, n in statuses.items() if s != "pending")
        good = statuses.get("done", 0) + statuses.get("dropped", 0)
        attempts, succeeded = e.get("attempts", 0), e.get("succeeded", 0)
        return {
            "id": target,
            "statuses": statuses,
            "success_rate": (good / finished) if finished else None,
            "attempts": attempts,
            "attempt_success_rate": (succeeded / attempts) if attempts else None,
            "last_error": e.get("last_error"),
            "last_error_at": e.get("last_error_at"),
            "last_success_at": e.get("last_success_at"),
            **more,
        }

    return {
        "handlers": [row("incoming", h.handler.id) for h in rt.settings.handlers],
        "subscriptions": [
            row("outgoing", s.id, url=mask_url(s.url), circuit=breakers.get(s.id, "closed"))
            for s in rt.settings.outgoing
        ],
    }


# ---------------------------------------------------------------------------- actions


async def replay(rt: Runtime, kind: str, delivery_id: str) -> tuple[int, dict[str, Any]]:
    """Run an incoming delivery again / send an outgoing one again (dead or finished)."""
    if await rt.store.requeue(delivery_id, kind):
        _wake(rt, kind)
        return 202, {"ok": True, "id": delivery_id, "kind": kind, "status": "pending"}
    found = (
        await rt.store.get_incoming(delivery_id)
        if kind == "incoming"
        else await rt.store.get_outgoing(delivery_id)
    )
    if found is None:
        return 404, {"ok": False, "error": f"no {kind} delivery {delivery_id!r}"}
    return 409, {"ok": False, "error": f"delivery {delivery_id!r} is pending already"}


def _wake(rt: Runtime, kind: str) -> None:
    if kind == "incoming":
        rt.pipeline.wake()
    else:
        rt.outbox.wake()


async def revive(rt: Runtime, ids: list[str]) -> list[str]:
    revived = await rt.store.revive(ids)
    _wake(rt, "incoming")
    _wake(rt, "outgoing")
    return revived


# ---------------------------------------------------------------------------- handlers


async def list_incoming(request: web.Request) -> web.Response:
    return await _list(request, "incoming")


async def list_outgoing(request: web.Request) -> web.Response:
    return await _list(request, "outgoing")


async def _list(request: web.Request, kind: str) -> web.Response:
    rt = runtime_of(request)
    query = delivery_query(request, kind)
    rows = await rt.store.list_deliveries(kind, query)
    more = len(rows) == query.limit
    return web.json_response(
        {
            "items": [summary_view(s) for s in rows],
            "next_cursor": (
                chain.encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
            ),
        }
    )


async def show_incoming(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    record = await rt.store.get_incoming(request.match_info["id"])
    if record is None:
        return fail(404, "no such incoming delivery")
    return web.json_response(await incoming_view(rt, record), dumps=jsontext.readable)


async def show_outgoing(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    record = await rt.store.get_outgoing(request.match_info["id"])
    if record is None:
        return fail(404, "no such outgoing delivery")
    return web.json_response(await outgoing_view(rt, record), dumps=jsontext.readable)


async def show_event(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    event = await chain.find_event(rt, request.match_info["id"])
    if event is None:
        return fail(404, "no such event")
    return web.json_response(await chain.event_view(rt, event), dumps=jsontext.readable)


async def list_events(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    query = chain.event_query(request, _since(request))
    return web.json_response(await chain.list_events(rt, query))


async def show_session(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    page = await chain.session_page(rt, request.match_info["key"], request)
    return web.json_response(page)


async def replay_incoming(request: web.Request) -> web.Response:
    status, body = await replay(runtime_of(request), "incoming", request.match_info["id"])
    return web.json_response(body, status=status)


async def replay_outgoing(request: web.Request) -> web.Response:
    status, body = await replay(runtime_of(request), "outgoing", request.match_info["id"])
    return web.json_response(body, status=status)


async def list_dead(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    letters = await rt.store.dead_letters(_since(request))
    return web.json_response({"items": [asdict(d) for d in letters]})


async def replay_dead_one(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    delivery_id = request.match_info["id"]
    if not await revive(rt, [delivery_id]):
        return fail(404, f"no dead letter {delivery_id!r}")
    return web.json_response({"ok": True, "replayed": [delivery_id]}, status=202)


async def replay_dead(request: web.Request) -> web.Response:
    """Body ``{"ids": [...]}`` or ``{"all": true, "since": TIME}``."""
    rt = runtime_of(request)
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return fail(400, "body: not JSON")
    if not isinstance(body, dict):
        return fail(400, "body: must be an object")
    ids = body.get("ids")
    if body.get("all") is True:
        since = body.get("since")
        if since is not None and not isinstance(since, str | int | float):
            return fail(400, "since: expected a time")
        from clawdbot_webhooks.cli.support import parse_time

        try:
            lower = None if since is None else parse_time(str(since))
        except Exception:
            return fail(400, "since: expected an ISO 8601 time, epoch seconds or a duration")
        ids = [d.id for d in await rt.store.dead_letters(lower)]
    elif not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return fail(400, 'give "ids": [...] or "all": true')
    revived = await revive(rt, ids) if ids else []
    return web.json_response({"ok": True, "replayed": revived}, status=202)


async def purge_dead(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    n = await rt.store.purge_dead(_since(request, "before"))
    return web.json_response({"ok": True, "purged": n})


async def purge_dead_one(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    delivery_id = request.match_info["id"]
    if not await rt.store.purge_dead_ids([delivery_id]):
        return fail(404, f"no dead letter {delivery_id!r}")
    return web.json_response({"ok": True, "purged": 1})


async def list_handlers(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    base = rt.settings.incoming.base_path.rstrip("/")
    items = [
        {
            "id": h.handler.id,
            "path": h.handler.path,
            "url_path": base + h.handler.path,
            "action": h.handler.action,
            "mode": h.handler.mode,
            "session_mode": h.handler.session_mode,
            # The scheme only: the options hold secrets.
            "verify": None if h.verify is None else h.verify.type,
        }
        for h in rt.settings.handlers
    ]
    return web.json_response({"items": items})


async def list_subscriptions(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    breakers = rt.breakers.states()
    items = [
        {
            "id": s.id,
            "url": mask_url(s.url),
            "events": sorted(s.events),
            "method": s.method,
            "transport": s.transport,
            "signed": s.secret is not None,
            "max_attempts": s.retry.max_attempts,
            "circuit": breakers.get(s.id, "closed"),
        }
        for s in rt.settings.outgoing
    ]
    return web.json_response({"items": items})


async def list_plugins(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    infos = sorted(rt.plugins.infos.values(), key=lambda i: (not i.builtin, i.name))
    return web.json_response({"items": [asdict(i) for i in infos]})


async def stats_endpoints(request: web.Request) -> web.Response:
    window = _number(request, "window", 86_400, 60, 90 * 86_400)
    return web.json_response(await endpoint_health(runtime_of(request), window))


async def stats_throughput(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    window = _number(request, "window", 3600, 60, 30 * 86_400)
    bucket = _number(request, "bucket", 60, 1, 86_400)
    if window / bucket > MAX_BUCKETS:
        raise BadRequest(f"window/bucket: at most {MAX_BUCKETS} buckets")
    now = time.time()
    start = (now - window) // bucket * bucket
    rows = await rt.store.throughput(start, bucket)
    return web.json_response({"start": start, "end": now, "bucket": bucket, "items": rows})


async def config_status(request: web.Request) -> web.Response:
    """The config file being followed and its reloads (applied, refused, the last one)."""
    rt = runtime_of(request)
    if rt.reloader is None:
        return web.json_response({"source": rt.settings.source, "watching": False})
    return web.json_response(rt.reloader.state.view(rt.settings.source))

"""``POST /events/ingest``: events from inside Clawdbot, sent by the event-bridge plugin.

Clawdbot's in-process plugin hooks see more than its WebSocket (inbound channel messages
above all). The bridge (clawdbot_webhooks/clawdbot-event-bridge) POSTs each hook call as
``{id, hook, timestamp, event, context}`` with ``Authorization: Bearer <token>``
(``incoming.eventIngress.token``); this maps it onto our bus:

=====================  ==========================================================
Clawdbot hook          our event
=====================  ==========================================================
``message_received``   ``message_received`` (``from``, ``text``, ``channel``)
``message_sent``       ``agent_response`` (``text``, ``to``, ``channel``); failed: ``error``
``session_start``      ``session_started``
``session_end``        ``session_ended``
``agent_end``          ``agent_response`` (last assistant text); failed: ``error``
=====================  ==========================================================

``agent_end`` of a run that this process started through the ``clawdbot`` gateway is not
published again: its ``run_agent`` action already published the reply. Event ids derive from
the bridge's call id, so a retried POST yields the same event id.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from clawdbot_webhooks_hookspecs import Event, bearer_token, matches_any, utc_timestamp

from clawdbot_webhooks.events import derived_event_id
from clawdbot_webhooks.web.errors import error
from clawdbot_webhooks.web.keys import RUNTIME

log = logging.getLogger(__name__)

HOOKS = ("message_received", "message_sent", "session_start", "session_end", "agent_end")


class IngressError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def authorized(header: str | None, token: str) -> bool:
    given = bearer_token(header)
    return given is not None and matches_any(given, [token])


def _timestamp(value: Any) -> str:
    """The event's time (seconds or milliseconds since the epoch); now when it has none or
    one no calendar holds (infinite, beyond the year 9999)."""
    if isinstance(value, int | float) and value > 0:
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return utc_timestamp(value / 1000 if value > 1e11 else value)
    return utc_timestamp()


def _agent_of(session_key: str) -> str | None:
    parts = session_key.split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "agent" and parts[1] else None


def map_bridge_event(body: Any, owns_session: Any = None) -> Event | None:
    """The bus event for one bridge POST; ``None`` when it is deliberately not published.
    Raises ``IngressError(400)`` for a body of the wrong shape."""
    if not isinstance(body, Mapping):
        raise IngressError(400, "body must be a JSON object")
    hook, call_id = body.get("hook"), body.get("id")
    if hook not in HOOKS:
        raise IngressError(400, f"hook must be one of {', '.join(HOOKS)}")
    if not isinstance(call_id, str) or not call_id:
        raise IngressError(400, "id must be a non-empty string")
    event = body.get("event")
    context = body.get("context") or {}
    if not isinstance(event, Mapping) or not isinstance(context, Mapping):
        raise IngressError(400, "event and context must be objects")
    when = _timestamp(event.get("timestamp") or body.get("timestamp"))
    session_key = str(context.get("sessionKey") or "")
    base: dict[str, Any] = {"source": "clawdbot-plugin", "hook": hook}
    channel = context.get("channelId")

    def make(kind: str, data: dict[str, Any], session: str | None) -> Event:
        return Event(
            kind,
            {**base, **data},
            session=session or None,
            id=derived_event_id("bridge", call_id, kind),
            timestamp=when,
        )

    if hook == "message_received":
        data = {
            "from": event.get("from"),
            "text": event.get("content"),
            "timestamp": when,
            "channel": channel,
            "conversation": context.get("conversationId"),
        }
        return make("message_received", data, context.get("conversationId"))
    if hook == "message_sent":
        if event.get("success") is False:
            return make("error", {"kind": "message_sent", "error": event.get("error")}, None)
        data = {"text": event.get("content"), "to": event.get("to"), "channel": channel}
        return make("agent_response", data, context.get("conversationId"))
    if hook in ("session_start", "session_end"):
        session = session_key or str(context.get("sessionId") or event.get("sessionId") or "")
        kind = "session_started" if hook == "session_start" else "session_ended"
        data = {
            k: v
            for k, v in event.items()
            if k in ("sessionId", "resumedFrom", "messageCount", "durationMs")
        }
        return make(kind, data, session)
    # agent_end
    agent_id = _agent_of(session_key) or context.get("agentId")
    if event.get("success") is False:
        data = {"kind": "agent", "agentId": agent_id, "error": event.get("error")}
        return make("error", data, session_key)
    if owns_session is not None and session_key and owns_session(session_key):
        return None
    data = {
        "text": event.get("text") or "",
        "agentId": agent_id,
        "runId": None,
        "durationMs": event.get("durationMs"),
    }
    return make("agent_response", data, session_key)


async def ingest(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    ingress = rt.settings.incoming.event_ingress
    token = ingress.token if ingress is not None else None
    if not token:
        return error(404, "event ingress is not configured")
    if not authorized(request.headers.get("Authorization"), token):
        return error(401, "missing or wrong bearer token")
    try:
        body = await request.json()
    except ValueError:
        return error(400, "body is not valid JSON")
    try:
        event = map_bridge_event(body, getattr(rt.gateway, "owns_session", None))
    except IngressError as exc:
        return error(exc.status, exc.message)
    if event is None:
        return web.json_response({"ok": True, "published": False}, status=200)
    try:
        await rt.bus.publish(event, source="bridge")
    except Exception as exc:
        log.error("ingested event %s could not be published: %r", event.id, exc)
        return error(503, "event could not be stored; try again")
    return web.json_response({"ok": True, "id": event.id, "type": event.type}, status=202)

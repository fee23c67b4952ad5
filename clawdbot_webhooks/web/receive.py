"""The webhook endpoint: admit the request, verify it, store it, hand it to the pipeline.

A request goes: method (405) → client address (403) → per-address rate limit (429) → route
(404) → authentication-failure throttle (429) → body within the limit and the read timeout
(413/408) → authentication (401) → a provider's handshake, answered at once (200) → content
type and parsing (415/400) → handler rate limit and ``maxPending`` (429) → duplicate check
(200) → stored durably (503 when that fails) → 202, and the pipeline takes it from there.
The handler's limit comes after authentication so that nobody without the secret can use up
a sender's allowance.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any

from aiohttp import web
from clawdbot_webhooks_hookspecs import Handshake, SignedRequest, VerificationError, new_id

from clawdbot_webhooks import jsontext
from clawdbot_webhooks.config import HandlerSpec
from clawdbot_webhooks.forms import fields
from clawdbot_webhooks.metrics import UNKNOWN_HOOK
from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.session_keys import SessionKeyError, render_session_key
from clawdbot_webhooks.sessions import ephemeral_session
from clawdbot_webhooks.store import IncomingRecord
from clawdbot_webhooks.store.dedup import dedup_key
from clawdbot_webhooks.web.deadlines import Deadline
from clawdbot_webhooks.web.errors import error
from clawdbot_webhooks.web.keys import Ingress
from clawdbot_webhooks.web.outage import RETRY_AFTER, describe, within
from clawdbot_webhooks.web.ratelimit import retry_after
from clawdbot_webhooks.web.requests import (
    Rejected,
    client_ip,
    header_text,
    ip_allowed,
    parse_content,
    read_body,
    stored_headers,
    whole_body,
)

log = logging.getLogger(__name__)

#: The 202's headers: given as a header, the type costs aiohttp less than as ``content_type``
#: (which it parses into type and parameters again for every response).
_JSON_TYPE = {"Content-Type": "application/json"}


def _too_many(seconds: float, message: str) -> Rejected:
    return Rejected(429, message, {"Retry-After": retry_after(seconds)})


async def _verify(
    spec: HandlerSpec, request: web.Request, body: bytes, ip: str
) -> tuple[str, Handshake | None]:
    """Authenticate; returns the sender's delivery id when the scheme carries one, and the
    verifier's answer when the request is a handshake rather than a delivery.

    ``spec.verify`` names the verifier and holds its loaded options; the config puts the
    shared secret there when a handler has no ``verify`` of its own."""
    if spec.verify is None:
        return "", None
    options, verifier = spec.verify.options, spec.verify.verifier
    signed = SignedRequest(
        method=request.method,
        path=request.path,
        headers=request.headers,  # case-insensitive already: no copy per request
        body=body,
        client_ip=ip,
        now=time.time(),
        # As sent: a scheme signing the URL (Twilio) signs its percent-escapes too.
        query_string=request.rel_url.raw_query_string,
    )
    try:
        sender_id = verifier.verify(signed, options)
        # A scheme that may have to fetch its keys answers an awaitable (checked last: an
        # ABC's isinstance check costs more than the rest of a shared secret's check).
        if not (sender_id is None or isinstance(sender_id, str)) and inspect.isawaitable(sender_id):
            sender_id = await sender_id
    except VerificationError as exc:
        raise Rejected(401, str(exc)) from exc
    except Exception as exc:  # the verifier's own fault: the request is not authenticated
        log.error("the verifier of hook %s failed: %r", spec.handler.id, exc, exc_info=exc)
        raise Rejected(401, "the request could not be verified") from exc
    handshake = spec.verify.handshake
    return sender_id or "", None if handshake is None else handshake(signed, options)


async def receive(rt: Runtime, ingress: Ingress, request: web.Request) -> web.StreamResponse:
    """The webhook route's handler, given what it needs by the app (``functools.partial``):
    no look-up in the request's app, each a call or two of aiohttp's, on every webhook."""
    hook_id = request.match_info["hook_id"]
    spec = rt.settings.routes.get(hook_id)
    hook = UNKNOWN_HOOK if spec is None else spec.handler.id
    try:
        if request.method != "POST":
            raise Rejected(405, f"method {request.method} not allowed; use POST", {"Allow": "POST"})
        if spec is None:
            # Still checked first: an address that may not send learns nothing of the routes.
            _admit(rt, ingress, request)
            shown = hook_id if len(hook_id) <= 80 else hook_id[:80] + "..."
            raise Rejected(404, f"no handler for hook {shown!r}")
        response = await _accept(rt, ingress, spec, request)
    except Rejected as exc:
        response = error(exc.status, exc.message, exc.headers)
    except Exception:
        rt.metrics.request(hook, 500)  # aiohttp answers it
        raise
    # Counted here, not in a middleware: see ``json_errors``.
    rt.metrics.request(hook, response.status)
    return response


def _admit(rt: Runtime, ingress: Ingress, request: web.Request) -> str:
    """The client's address, once it may send at all (403) and is within its rate (429)."""
    incoming = rt.settings.incoming
    ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), incoming.trusted_proxies)
    if incoming.allowed_ips is not None and not ip_allowed(ip, incoming.allowed_ips):
        raise Rejected(403, f"client address {ip} is not allowed")
    wait = ingress.limits.client(ip)
    if wait:
        raise _too_many(wait, "too many requests from this address")
    return ip


async def _accept(
    rt: Runtime, ingress: Ingress, spec: HandlerSpec, request: web.Request
) -> web.Response:
    ip = _admit(rt, ingress, request)
    incoming = rt.settings.incoming
    limits = ingress.limits
    if not rt.accepting:
        raise Rejected(503, "shutting down; try again shortly", {"Retry-After": "5"})
    wait = limits.auth_blocked(ip)
    if wait:
        raise _too_many(wait, "too many failed authentication attempts from this address")
    body = whole_body(request, incoming.max_body_bytes)
    if body is None:
        body = await read_body(request, incoming.max_body_bytes, incoming.read_timeout)
    try:
        sender_id, handshake = await _verify(spec, request, body, ip)
    except Rejected:
        limits.auth_failed(ip)
        raise
    if handshake is not None:  # the provider checking the endpoint: no delivery to store
        return web.json_response(handshake.body, status=handshake.status)
    raw_type = request.headers.get("Content-Type", "")
    if not raw_type.isascii():  # stored with the delivery: as ``header_text``
        raw_type = header_text(raw_type)
    payload = spec.presented(parse_content(body, raw_type, max_depth=incoming.max_json_depth))
    wait = limits.handler(spec.handler.id)
    if wait:
        raise _too_many(wait, f"rate limit of hook {spec.handler.id!r} reached")
    if spec.max_pending is not None:
        pending = rt.pipeline.in_flight(spec.handler.id)
        if pending >= spec.max_pending:
            raise _too_many(1, f"hook {spec.handler.id!r} has {pending} deliveries waiting")
    headers = stored_headers(request.headers, spec.credential_headers)
    window = incoming.dedup_window
    if not sender_id.isascii():  # the id is stored too
        sender_id = header_text(sender_id)
    dedup = dedup_key(sender_id, headers) if window > 0 else None
    record = IncomingRecord(
        id=new_id("dlv"),
        hook_id=spec.handler.id,
        received_at=time.time(),
        content_type=raw_type,
        body=body,
        headers=headers,
        query=fields(request.query.items()) if request.query_string else {},
        client_ip=ip,
        session="",
        dedup_key=dedup,
    )
    record.session = _session_for(spec, record, payload) if spec.persistent else ephemeral_session()
    outage = ingress.outage
    try:
        # Within the deadline, or the sender gives up first and sends it again. A write that
        # commits after the 503 leaves the delivery stored: it runs once (its lease runs out,
        # the poller takes it), and a retry with the same delivery id is a duplicate.
        # (The insert is awaited as a future, which lets go at once when cancelled.)
        deadline = Deadline(ingress.deadlines, incoming.store_timeout)
        with deadline:
            stored, waiter = await rt.pipeline.accept(
                record,
                payload,
                sync=spec.handler.mode == "sync",
                dedup_since=record.received_at - window,
                spec=spec,
            )
        original = None
        if not stored:
            original = await within(
                rt.store.find_duplicate(spec.handler.id, dedup or ""), deadline.left()
            )
    except TimeoutError as exc:
        outage.failed(f"no answer within {incoming.store_timeout:g}s")
        raise Rejected(
            503,
            f"storage did not answer within {incoming.store_timeout:g}s; nothing was accepted",
            {"Retry-After": str(RETRY_AFTER)},
        ) from exc
    except Exception as exc:  # whatever the driver raised: the contract does not depend on it
        outage.failed(describe(exc))
        raise Rejected(
            503, "storage unavailable; nothing was accepted", {"Retry-After": str(RETRY_AFTER)}
        ) from exc
    outage.succeeded()
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
    return web.Response(body=jsontext.encode(answer), status=202, headers=_JSON_TYPE)


def _session_for(spec: HandlerSpec, record: IncomingRecord, payload: Any) -> str:
    """A persistent handler's delivery's session (an ephemeral handler's is new each time,
    ``ephemeral_session``); empty when its ``sessionKey`` has no value for it: stored all
    the same, it becomes a dead letter saying why (a sender cannot fix its payload from a
    400 the way an operator can fix a key and replay)."""
    if spec.session_key is None:
        return ephemeral_session()
    try:
        return render_session_key(spec, record.as_delivery(payload))
    except SessionKeyError:
        return ""

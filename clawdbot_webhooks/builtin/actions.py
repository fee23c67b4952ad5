"""The built-in actions: send_message, run_agent, forward, custom."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from clawdbot_webhooks_hookspecs import (
    ActionContext,
    ActionError,
    Event,
    Template,
    hookimpl,
)
from marshmallow import Schema, ValidationError, fields, validate

from clawdbot_webhooks.events import derived_event_id


class _Target(Schema):
    channel = fields.String(required=True)
    peer = Template(required=True)


class SendMessage:
    """Send the rendered ``template`` to ``target: {channel, peer}`` through the gateway."""

    class schema(Schema):
        target = fields.Nested(_Target, required=True)
        template = Template(required=True)

    async def run(self, ctx: ActionContext) -> Any:
        target = ctx.options["target"]
        sent = await ctx.gateway.send_message(
            channel=target["channel"],
            peer=target["peer"],
            text=ctx.options["template"],
            session=ctx.session,
            idempotency_key=ctx.idempotency_key,
        )
        return dict(sent)


class RunAgent:
    """Prompt agent ``agentId`` with the rendered ``template``; its reply is an
    ``agent_response`` event."""

    class schema(Schema):
        agentId = fields.String(required=True, validate=validate.Length(min=1))
        template = Template(required=True)

    async def run(self, ctx: ActionContext) -> Any:
        agent_id = ctx.options["agentId"]
        reply = await ctx.gateway.run_agent(
            agent_id=agent_id,
            message=ctx.options["template"],
            session=ctx.session,
            idempotency_key=ctx.idempotency_key,
        )
        await ctx.publish(
            Event(
                "agent_response",
                {"text": reply.text, "agentId": reply.agent_id, "runId": reply.run_id},
                session=ctx.session,
                causation=ctx.delivery.id,
                id=derived_event_id(ctx.delivery.id, "agent_response", reply.run_id),
            )
        )
        return {"runId": reply.run_id, "text": reply.text}


#: Not passed on by a forward: they describe one connection, not the message (RFC 9110 §7.6.1),
#: or are recomputed for the new request.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    }
)
#: Status codes worth retrying; any other non-2xx answer is final.
RETRYABLE = frozenset({408, 425, 429}) | frozenset(range(500, 600))


class Forward:
    """POST the original body, with its content type, to the configured ``url``.

    The address comes from the config only, never from the payload. Each attempt carries
    ``Idempotency-Key: <delivery id>`` so the receiver can drop repeats.
    """

    class schema(Schema):
        url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
        timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.001))
        headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)

    async def run(self, ctx: ActionContext) -> Any:
        delivery = ctx.delivery
        headers = {k: v for k, v in delivery.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.update(ctx.options["headers"])
        headers["content-type"] = delivery.content_type or "application/octet-stream"
        headers["idempotency-key"] = ctx.idempotency_key
        headers["x-clawdbot-delivery"] = delivery.id
        started = time.monotonic()
        try:
            async with ctx.http.post(
                ctx.options["url"],
                data=delivery.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=ctx.options["timeout"]),
            ) as response:
                text = (await response.content.read(2048)).decode("utf-8", "replace")
                status = response.status
        except TimeoutError as exc:
            raise ActionError(f"forward timed out after {ctx.options['timeout']}s") from exc
        except aiohttp.ClientError as exc:
            raise ActionError(f"forward failed: {exc}") from exc
        if not 200 <= status < 300:
            raise ActionError(f"forward answered {status}: {text[:200]}", retry=status in RETRYABLE)
        return {"status": status, "ms": round((time.monotonic() - started) * 1000, 1)}


def _import_callable(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValidationError("expected 'module:callable'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValidationError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValidationError(f"module {module_name!r} has no {attr!r}")
    if not callable(target):
        raise ValidationError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


class _Function(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return _import_callable(super()._deserialize(value, attr, data, **kwargs))


@functools.lru_cache(maxsize=256)
def _is_coroutine_function(function: Callable[..., Any]) -> bool:
    """Asked for every delivery; the answer for a configured function never changes."""
    return inspect.iscoroutinefunction(function)


class Custom:
    """Call ``function: "module:callable"`` with the action context.

    An ``async def`` runs on the event loop; a plain function runs in a worker thread, so a
    blocking call in it cannot stall the server.
    """

    class schema(Schema):
        function = _Function(required=True)
        template = Template(load_default=None)

    async def run(self, ctx: ActionContext) -> Any:
        function = ctx.options["function"]
        if _is_coroutine_function(function):
            return await function(ctx)
        outcome = await asyncio.to_thread(function, ctx)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return outcome


@hookimpl
def register_actions(register: Callable[[str, Any], None]) -> None:
    register("send_message", SendMessage())
    register("run_agent", RunAgent())
    register("forward", Forward())
    register("custom", Custom())

"""The built-in actions: send_message, run_agent, wake, forward, custom."""

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
    AgentPromptSchema,
    Event,
    ReplyTarget,
    SupportsWake,
    Template,
    agent_prompt_async,
    derived_event_id,
    hookimpl,
    prompt_agent,
)
from marshmallow import Schema, ValidationError, fields, validate, validates_schema


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


#: Clawdbot's thinking levels (``normalizeThinkLevel``), checked here so a typo fails ``check``.
THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh")
#: Clawdbot's longest session label.
LABEL_MAX = 64


class _Literal(fields.String):
    """A string from the config taken as it is: where a reply goes is never a template, so
    something that looks like one is refused rather than sent as a chat's name."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "{{" in text or "{%" in text:
            raise ValidationError(
                "templates are not allowed here: where a reply goes comes from the config only"
            )
        return text


class _Deliver(Schema):
    channel = _Literal(required=True, validate=validate.Length(min=1))
    to = _Literal(load_default=None, validate=validate.Length(min=1))
    threadId = _Literal(load_default=None, validate=validate.Length(min=1))
    accountId = _Literal(load_default=None, validate=validate.Length(min=1))

    @validates_schema
    def _to_unless_last(self, data: dict[str, Any], **kwargs: Any) -> None:
        # Only "last" knows a chat of its own: the one the session's user last used.
        if data.get("channel") != "last" and not data.get("to"):
            raise ValidationError("required unless channel is 'last'", "to")


def reply_target(options: Any) -> ReplyTarget | None:
    """The ``deliver`` option as the Gateway protocol takes it."""
    if not options:
        return None
    return ReplyTarget(
        channel=options["channel"],
        to=options.get("to"),
        thread_id=options.get("threadId"),
        account_id=options.get("accountId"),
    )


def run_options(options: Any) -> dict[str, Any]:
    """The run options a handler set, as ``Gateway.run_agent`` keywords. Options left unset
    are not passed at all, so a gateway written before they existed keeps working."""
    given: dict[str, Any] = {
        "deliver": reply_target(options.get("deliver")),
        "thinking": options.get("thinking"),
        "timeout": options.get("timeout"),
        "label": options.get("label"),
    }
    return {key: value for key, value in given.items() if value is not None}


class RunAgent:
    """Prompt agent ``agentId`` with the rendered ``template``; its reply is an
    ``agent_response`` event, and with ``deliver`` also a message to that chat.

    The template's text comes from the payload: it goes inside the untrusted-content boundary
    (unless ``allowUnsafeExternalContent``); ``instructions``, the operator's own words, stay
    outside it."""

    class schema(AgentPromptSchema):
        agentId = fields.String(required=True, validate=validate.Length(min=1))
        template = Template(required=True)
        deliver = fields.Nested(_Deliver, load_default=None)
        thinking = fields.String(load_default=None, validate=validate.OneOf(THINKING_LEVELS))
        # Whole seconds: Clawdbot's agent method takes an integer.
        timeout = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=1))
        label = fields.String(load_default=None, validate=validate.Length(min=1, max=LABEL_MAX))

    async def run(self, ctx: ActionContext) -> Any:
        agent_id = ctx.options["agentId"]
        reply = await prompt_agent(
            ctx, agent_id=agent_id, text=ctx.options["template"], **run_options(ctx.options)
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


async def wake_text(ctx: ActionContext) -> str:
    """The text a ``wake`` queues: the rendered template inside the untrusted-content
    boundary (the content policy applied first), the handler's ``instructions`` before it: a
    wake has no system-prompt channel of its own."""
    text = await agent_prompt_async(ctx, ctx.options["template"])
    instructions = ctx.options.get("instructions")
    return f"{instructions}\n\n{text}" if instructions else text


class Wake:
    """Queue the rendered ``template`` as a system event for Clawdbot's main session
    (``wakeMode: now`` runs a heartbeat at once, ``next-heartbeat`` waits for the next one).

    ``wakeMode``, as Clawdbot's own agent hook names it: a handler's ``mode`` is already
    ``async``/``sync``.
    """

    class schema(AgentPromptSchema):
        template = Template(required=True)
        wakeMode = fields.String(
            load_default="now", validate=validate.OneOf(["now", "next-heartbeat"])
        )

    async def run(self, ctx: ActionContext) -> Any:
        gateway = ctx.gateway
        if not isinstance(gateway, SupportsWake):
            raise ActionError(
                f"the gateway ({type(gateway).__name__}) cannot wake a session", retry=False
            )
        if not ctx.options["template"].strip():
            # Clawdbot refuses an empty wake; trying again would render the same.
            raise ActionError("wake: the template rendered no text", retry=False)
        text = await wake_text(ctx)
        mode = ctx.options["wakeMode"]
        answer = await gateway.wake(text, mode)
        return {"mode": mode, **dict(answer)}


#: Not passed on by a forward: they describe one connection (HTTP's hop-by-hop fields), not
#: the message, or are recomputed for the new request.
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
        # The body is stored as decoded (aiohttp undoes gzip and the like on the way in): the
        # label would name an encoding the forwarded bytes no longer have.
        "content-encoding",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    }
)
#: Status codes worth retrying; any other non-2xx answer is final.
RETRYABLE = frozenset({408, 425, 429}) | frozenset(range(500, 600))


class ForwardAnswered(ActionError):
    """A forward the receiver answered with a non-2xx status: the attempt history keeps the
    status and the start of the response next to the error."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"forward answered {status}: {text[:200]}", retry=status in RETRYABLE)
        self.status = status
        self.response = text


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
            raise ForwardAnswered(status, text)
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


class ActionPlugin:
    """A built-in plugin that registers one action, so each can be switched off by its name
    (``custom``, which runs Python named in the config, alone for instance)."""

    def __init__(self, name: str, make: Callable[[], Any]) -> None:
        self.name = name
        self._make = make

    @hookimpl
    def register_actions(self, register: Callable[[str, Any], None]) -> None:
        register(self.name, self._make())

    def __repr__(self) -> str:
        return f"<built-in plugin of action {self.name!r}>"


# The entry points of the clawdbot-webhooks distribution name these (pyproject.toml).
send_message_plugin = ActionPlugin("send_message", SendMessage)
run_agent_plugin = ActionPlugin("run_agent", RunAgent)
wake_plugin = ActionPlugin("wake", Wake)
forward_plugin = ActionPlugin("forward", Forward)
custom_plugin = ActionPlugin("custom", Custom)

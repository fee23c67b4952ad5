"""GitHub events as short readable messages: template filters and the ``github_notify`` preset.

Filters (usable in every template)::

    {{ event | github_summary(headers['x-github-event']) }}
    {{ event | github_link(headers['x-github-event']) }}
    {{ event | github_repo }}  {{ event | github_actor }}  {{ sha | short_sha }}

The ``github_notify`` action needs no template: it reads the event name from the
``X-GitHub-Event`` header and sends the summary to ``target`` (or prompts ``agentId``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import (
    ActionContext,
    AgentPromptSchema,
    Event,
    derived_event_id,
    hookimpl,
    prompt_agent,
)
from marshmallow import Schema, ValidationError, fields, validates_schema

from .summaries import actor, link, one_line, repo_name, short_sha, summary

__version__ = "0.1.0"
__all__ = ["GithubNotify", "event_name", "summary"]


def event_name(headers: Mapping[str, str]) -> str | None:
    """The ``X-GitHub-Event`` header, whatever its case."""
    for key, value in headers.items():
        if key.lower() == "x-github-event":
            return value
    return None


class _Target(Schema):
    channel = fields.String(required=True)
    peer = fields.String(required=True)


class GithubNotify:
    """Send a one-line summary of each GitHub event to ``target``, or prompt ``agentId``.

    ``events`` limits it to some event names (others finish without sending anything);
    ``link`` (default true) appends the event's page; ``prefix`` goes in front. The summary
    quotes the event (titles, names): an agent gets it inside the untrusted-content boundary,
    with the handler's ``instructions`` outside it, as ``run_agent`` does.
    """

    class schema(AgentPromptSchema):
        target = fields.Nested(_Target, load_default=None)
        agentId = fields.String(load_default=None)
        events = fields.List(fields.String(), load_default=None)
        link = fields.Boolean(load_default=True)
        prefix = fields.String(load_default="")

        @validates_schema
        def _one_destination(self, data: Mapping[str, Any], **_: Any) -> None:
            if (data.get("target") is None) == (data.get("agentId") is None):
                raise ValidationError("set exactly one of target or agentId", "target")

    async def run(self, ctx: ActionContext) -> Any:
        name = event_name(ctx.delivery.headers)
        wanted = ctx.options["events"]
        if wanted is not None and name not in wanted:
            return {"skipped": name}
        text = ctx.options["prefix"] + summary(ctx.delivery.payload, name, ctx.options["link"])
        target = ctx.options["target"]
        if target is not None:
            sent = await ctx.gateway.send_message(
                channel=target["channel"],
                peer=target["peer"],
                text=text,
                session=ctx.session,
                idempotency_key=ctx.idempotency_key,
            )
            return {"event": name, "text": text, "sent": dict(sent)}
        reply = await prompt_agent(ctx, agent_id=ctx.options["agentId"], text=text)
        # A stable id: a re-run after a crash publishes the same event, which receivers drop.
        await ctx.publish(
            Event(
                "agent_response",
                {"text": reply.text, "agentId": reply.agent_id, "runId": reply.run_id},
                session=ctx.session,
                causation=ctx.delivery.id,
                id=derived_event_id(ctx.delivery.id, "github", reply.run_id),
            )
        )
        return {"event": name, "text": text, "runId": reply.run_id}


def _summary_filter(payload: Any, event: str | None = None, with_link: bool = False) -> str:
    return summary(payload, event, with_link)


@hookimpl
def register_template_filters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("github_summary", _summary_filter)
    register("github_link", link)
    register("github_repo", repo_name)
    register("github_actor", actor)
    register("github_title", one_line)
    register("short_sha", short_sha)


@hookimpl
def register_actions(register: Callable[[str, Any], None]) -> None:
    register("github_notify", GithubNotify())

"""The ``clawdbot`` gateway: a real Clawdbot over its Gateway WebSocket protocol.

``run_agent`` is an ``agent`` request (``idempotencyKey`` = the delivery id, so a retry or a
re-send after a reconnect never starts a second run; the handler's run options become its
``deliver``/``channel``/``to``/``threadId``/``accountId``, ``thinking``, ``timeout`` and
``label``, its ``instructions`` ``extraSystemPrompt``), ``send_message`` a ``send`` request and
``wake`` a ``wake`` request.
Clawdbot's run events become events on our bus:

============================  ======================================================
our event                     Clawdbot event
============================  ======================================================
``session_started``           ``agent`` stream ``lifecycle``, phase ``start``
``agent_response``            ``chat`` state ``final`` (runs we did not start: ours
                              publish it from the ``run_agent`` action, once)
``session_ended``             ``agent`` stream ``lifecycle``, phase ``end``
``error``                     ``agent`` lifecycle phase ``error``, ``chat`` state ``error``
============================  ======================================================

By default (``events: "ours"``) only runs this process started are mapped; ``events: "all"``
maps every run the gateway reports (chats from other channels, other clients' runs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from clawdbot_webhooks_hookspecs import (
    AgentReply,
    Event,
    GatewayEnv,
    GatewayError,
    ReplyTarget,
    derived_event_id,
    hookimpl,
)
from marshmallow import Schema, fields, validate

from clawdbot_webhooks.builtin.clawdbot.client import ClientOptions, GatewayClient
from clawdbot_webhooks.builtin.clawdbot.keys import hook_session_key
from clawdbot_webhooks.builtin.clawdbot_config import ClawdbotConfigError, describe, discover

DEFAULT_URL = "ws://127.0.0.1:18789"
#: How many of our own runs are remembered for mapping their late events.
REMEMBERED_RUNS = 4096


class ClawdbotGatewaySchema(Schema):
    # Left out: read from Clawdbot's own config (gateway.bind/port/tls, gateway.auth.token).
    url = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(r"^wss?://", error="must be a ws:// or wss:// URL"),
    )
    token = fields.String(load_default=None, allow_none=True)
    events = fields.String(load_default="ours", validate=validate.OneOf(["ours", "all"]))
    connectTimeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.01))
    requestTimeout = fields.Float(load_default=30.0, validate=validate.Range(min=0.01))
    agentTimeout = fields.Float(load_default=600.0, validate=validate.Range(min=0.01))
    offlineWait = fields.Float(load_default=30.0, validate=validate.Range(min=0))
    reconnectDelay = fields.Float(load_default=0.5, validate=validate.Range(min=0.001))
    reconnectMaxDelay = fields.Float(load_default=30.0, validate=validate.Range(min=0.001))
    heartbeat = fields.Float(load_default=15.0, validate=validate.Range(min=0))


@dataclass(frozen=True, slots=True)
class _Run:
    session: str
    agent_id: str
    delivery: str


def clawdbot_session_key(agent_id: str, session: str) -> str:
    """The session key sent to Clawdbot: under the agent's own (Clawdbot refuses an
    ``agentId`` whose session key belongs to another agent), then ``hook_session_key``."""
    return f"agent:{agent_id}:{hook_session_key(session)}"


def agent_run_params(
    *,
    deliver: ReplyTarget | None,
    thinking: str | None,
    timeout: int | None,
    label: str | None,
) -> dict[str, Any]:
    """A handler's run options as parameters of Clawdbot's ``agent`` method."""
    params: dict[str, Any] = {}
    if deliver is not None:
        params["deliver"] = True
        params["channel"] = deliver.channel
        for key, value in (
            ("to", deliver.to),
            ("threadId", deliver.thread_id),
            ("accountId", deliver.account_id),
        ):
            if value is not None:
                params[key] = value
    if thinking is not None:
        params["thinking"] = thinking
    if timeout is not None:
        params["timeout"] = timeout
    if label is not None:
        params["label"] = label
    return params


def _agent_of(session_key: str) -> str:
    parts = session_key.split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "agent" and parts[1] else "main"


def reply_text(result: Any) -> str:
    """The text of an ``agent`` result: its payloads' texts, in order."""
    if not isinstance(result, Mapping):
        return ""
    texts = [
        str(p.get("text"))
        for p in result.get("payloads") or []
        if isinstance(p, Mapping) and p.get("text")
    ]
    return "\n\n".join(texts)


def message_text(message: Any) -> str:
    """The text of a chat message: a string, or the text parts of its content."""
    if isinstance(message, str):
        return message
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return str(message.get("text") or "")


class ClawdbotGateway:
    def __init__(self, options: Mapping[str, Any], env: GatewayEnv) -> None:
        loaded = ClawdbotGatewaySchema().load(dict(options))
        try:
            self.options, self.sources = discover(
                loaded, {"url": "ws_url", "token": "gateway_token"}
            )
        except ClawdbotConfigError as exc:
            raise GatewayError(f"reading Clawdbot's config: {exc}") from None
        self.url: str = self.options["url"] or DEFAULT_URL
        self.env = env
        self.all_events = self.options["events"] == "all"
        self.client = GatewayClient(
            self.url,
            self.options["token"],
            on_event=self._on_event,
            logger=env.logger,
            options=ClientOptions(
                connect_timeout=self.options["connectTimeout"],
                request_timeout=self.options["requestTimeout"],
                offline_wait=self.options["offlineWait"],
                reconnect_initial=self.options["reconnectDelay"],
                reconnect_max=self.options["reconnectMaxDelay"],
                heartbeat=self.options["heartbeat"] or None,
                client_version=_own_version(),
            ),
        )
        self._ours: OrderedDict[str, _Run] = OrderedDict()
        self._our_sessions: OrderedDict[str, None] = OrderedDict()
        self._errored: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    async def probe(self) -> str:
        hello = await self.client.probe()
        server = hello.get("server") or {}
        version = server.get("version") if isinstance(server, Mapping) else None
        main = ((hello.get("snapshot") or {}).get("sessionDefaults") or {}).get("mainSessionKey")
        parts = [f"protocol {hello.get('protocol')}"]
        if version:
            parts.append(f"server {version}")
        if main:
            parts.append(f"main session {main}")
        return f"Clawdbot gateway at {self.url} ({', '.join(parts)}); {describe(self.sources)}"

    # ------------------------------------------------------------------ actions

    def _remember(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > REMEMBERED_RUNS:
            table.popitem(last=False)

    async def run_agent(
        self,
        *,
        agent_id: str,
        message: str,
        session: str,
        idempotency_key: str,
        deliver: ReplyTarget | None = None,
        thinking: str | None = None,
        timeout: int | None = None,
        label: str | None = None,
        instructions: str | None = None,
    ) -> AgentReply:
        # Remembered before sending: the run's first events can beat the "accepted" answer.
        self._remember(self._ours, idempotency_key, _Run(session, agent_id, idempotency_key))
        session_key = clawdbot_session_key(agent_id, session)
        self._remember(self._our_sessions, session_key, None)
        params: dict[str, Any] = {
            "message": message,
            "agentId": agent_id,
            "sessionKey": session_key,
            "idempotencyKey": idempotency_key,
            **agent_run_params(deliver=deliver, thinking=thinking, timeout=timeout, label=label),
        }
        if instructions:
            # The operator's words go to the system prompt, apart from the payload's text.
            params["extraSystemPrompt"] = instructions
        # A handler's own timeout bounds its runs on Clawdbot's side; the answer may take the
        # request timeout longer to come back (the reply is delivered after the run).
        wait = self.options["agentTimeout"]
        if timeout is not None:
            wait = timeout + self.options["requestTimeout"]
        # An undeliverable reply is an ``ok: false`` answer (``Unknown channel: discord``):
        # the client raises it as a retryable GatewayError with Clawdbot's message, and a
        # retry gets Clawdbot's cached answer for the key instead of running the agent again.
        answer = await self.client.request(
            "agent", params, expect_final=True, idempotent=True, timeout=wait
        )
        answer = answer if isinstance(answer, Mapping) else {}
        if answer.get("status") not in ("ok", None):
            raise GatewayError(
                f"Clawdbot agent run failed: {answer.get('summary') or answer.get('status')}"
            )
        run_id = str(answer.get("runId") or idempotency_key)
        if run_id != idempotency_key:
            self._remember(self._ours, run_id, _Run(session, agent_id, idempotency_key))
        return AgentReply(reply_text(answer.get("result")), run_id, agent_id)

    def owns_session(self, session_key: str) -> bool:
        """Whether a Clawdbot session key is one this process ran agents in (so the reply
        was published by the action, not to be published again from Clawdbot's side)."""
        return session_key in self._our_sessions

    async def send_message(
        self, *, channel: str, peer: str, text: str, session: str, idempotency_key: str
    ) -> Mapping[str, Any]:
        params = {
            "to": peer,
            "message": text,
            "channel": channel,
            "idempotencyKey": idempotency_key,
        }
        answer = await self.client.request("send", params, idempotent=True)
        result = dict(answer) if isinstance(answer, Mapping) else {"result": answer}
        result.setdefault("channel", channel)
        result.setdefault("to", peer)
        return result

    async def wake(self, text: str, mode: str = "now") -> Mapping[str, Any]:
        """Queue a system event for the main session (Clawdbot's ``wake``). Not idempotent:
        a connection lost under it fails the attempt, which may or may not have woken it."""
        answer = await self.client.request("wake", {"mode": mode, "text": text})
        return dict(answer) if isinstance(answer, Mapping) else {}

    # ------------------------------------------------------------------ events

    def _on_event(self, name: str, payload: Mapping[str, Any]) -> None:
        if name not in ("agent", "chat"):
            return
        run_id = str(payload.get("runId") or "")
        if not run_id:
            return
        run = self._ours.get(run_id)
        if run is None and not self.all_events:
            return
        session_key = str(payload.get("sessionKey") or "")
        session: str | None
        cause: str | None
        if run is not None:
            session, agent_id, cause = run.session, run.agent_id, run.delivery
        else:
            session, agent_id, cause = session_key or None, _agent_of(session_key), None
        base = {"source": "clawdbot", "runId": run_id, "agentId": agent_id}
        if name == "agent":
            if payload.get("stream") != "lifecycle":
                return
            data = payload.get("data") or {}
            phase = data.get("phase") if isinstance(data, Mapping) else None
            if phase == "start":
                self._emit("session_started", base, session, cause, run_id)
            elif phase == "end":
                reason = "aborted" if data.get("aborted") else "completed"
                self._emit("session_ended", {**base, "reason": reason}, session, cause, run_id)
            elif phase == "error":
                self._error(base, str(data.get("error") or "agent run failed"), session, cause)
            return
        state = payload.get("state")
        if state == "final" and run is None:
            text = message_text(payload.get("message"))
            self._emit("agent_response", {**base, "text": text}, session, cause, run_id)
        elif state == "error":
            reason = str(payload.get("errorMessage") or "chat run failed")
            self._error(base, reason, session, cause)

    def _error(
        self, base: dict[str, Any], reason: str, session: str | None, cause: str | None
    ) -> None:
        run_id = base["runId"]
        # Both the lifecycle and the chat stream report a failed run: one error event.
        if run_id in self._errored:
            return
        self._remember(self._errored, run_id, None)
        self._emit("error", {**base, "kind": "agent", "error": reason}, session, cause, run_id)

    def _emit(
        self,
        kind: str,
        data: Mapping[str, Any],
        session: str | None,
        cause: str | None,
        run_id: str,
    ) -> None:
        self.env.emit(
            Event(
                kind,
                data,
                session=session,
                causation=cause,
                id=derived_event_id("clawdbot", run_id, kind),
            )
        )


def _own_version() -> str:
    """This plugin's version as Clawdbot sees the client: its distribution's."""
    try:
        return metadata.version("clawdbot-webhooks")
    except metadata.PackageNotFoundError:
        return "0"


def create(options: Mapping[str, Any], env: GatewayEnv) -> ClawdbotGateway:
    return ClawdbotGateway(options, env)


create.schema = ClawdbotGatewaySchema  # type: ignore[attr-defined]


@hookimpl
def register_gateways(register: Callable[[str, Any], None]) -> None:
    register("clawdbot", create)


__all__ = [
    "ClawdbotGateway",
    "ClawdbotGatewaySchema",
    "agent_run_params",
    "clawdbot_session_key",
    "create",
]

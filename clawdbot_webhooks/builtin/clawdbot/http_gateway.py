"""The ``clawdbot-http`` gateway: Clawdbot's HTTP hooks instead of its WebSocket.

``run_agent`` POSTs ``{hooks path}/agent`` with ``Authorization: Bearer <hooks.token>`` and
gets ``202 {"ok": true, "runId"}``. Its limits, plainly:

- no reply text: the run happens after the answer, so ``agent_response`` carries an empty
  ``text`` (use the ``clawdbot`` WebSocket gateway to get the reply);
- the ``runId`` it answers is not the one Clawdbot's WebSocket events use; a run can only be
  correlated with them by its session key (Clawdbot stores it as ``agent:main:<key>``, the
  key being ``hook_session_key``'s);
- no idempotency key: a retried delivery whose first POST was accepted runs the agent again;
- no system-prompt field: a handler's ``instructions`` go before the message;
- no ``send_message`` (there is no HTTP hook that sends text as it is), and no events;
- ``deliver`` is passed on (``channel``, ``to``), but the hook has answered before the reply
  exists: a reply Clawdbot cannot deliver is logged by Clawdbot, never reported here. The hook
  has no ``threadId``, ``accountId`` or ``label``: a handler that sets one fails (dead letter)
  rather than run without it.

``wake(text, mode)`` POSTs ``{hooks path}/wake``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from clawdbot_webhooks_hookspecs import (
    AgentReply,
    GatewayEnv,
    GatewayError,
    ReplyTarget,
    hookimpl,
)
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from clawdbot_webhooks.builtin.clawdbot.client import connect_failure
from clawdbot_webhooks.builtin.clawdbot.keys import hook_session_key
from clawdbot_webhooks.builtin.clawdbot_config import (
    ClawdbotConfig,
    ClawdbotConfigError,
    describe,
    discover,
)

#: Answers worth trying again; any other non-2xx answer is final.
RETRYABLE = frozenset({408, 425, 429}) | frozenset(range(500, 600))


class ClawdbotHttpGatewaySchema(Schema):
    # Left out: read from Clawdbot's own config (gateway.bind/port/tls, hooks.token/path).
    url = fields.Url(
        load_default=None, allow_none=True, schemes={"http", "https"}, require_tld=False
    )
    token = fields.String(load_default=None, allow_none=True)
    path = fields.String(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^(/[^/?#]+)+$")
    )
    timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.001))

    @validates_schema
    def _token_somewhere(self, data: dict[str, Any], **kwargs: Any) -> None:
        # Refused by `check` already, not at the first delivery.
        if data.get("token"):
            return
        try:
            found = ClawdbotConfig.load().hooks_token()
        except ClawdbotConfigError as exc:
            raise ValidationError(f"not set, and Clawdbot's config: {exc}", "token") from None
        if found is None:
            raise ValidationError("not set here nor as hooks.token in Clawdbot's config", "token")


class ClawdbotHttpGateway:
    def __init__(self, options: Mapping[str, Any], env: GatewayEnv) -> None:
        loaded = ClawdbotHttpGatewaySchema().load(dict(options))
        try:
            self.options, self.sources = discover(
                loaded, {"url": "http_url", "token": "hooks_token", "path": "hooks_path"}
            )
        except ClawdbotConfigError as exc:
            raise GatewayError(f"reading Clawdbot's config: {exc}") from None
        if not self.options["token"]:
            raise GatewayError(
                "no token for Clawdbot's HTTP hooks: set gateway.token here or hooks.token "
                "in Clawdbot's config"
            )
        self.options["url"] = self.options["url"] or "http://127.0.0.1:18789"
        self.options["path"] = self.options["path"] or "/hooks"
        self.base = self.options["url"].rstrip("/") + self.options["path"]
        self.env = env
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _post(self, hook: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        if self._http is None:
            await self.start()
        assert self._http is not None
        url = f"{self.base}/{hook}"
        headers = {"Authorization": f"Bearer {self.options['token']}"}
        try:
            async with self._http.post(
                url,
                json=dict(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.options["timeout"]),
            ) as response:
                text = await response.text()
                status = response.status
        except TimeoutError as exc:
            raise GatewayError(
                f"Clawdbot {url} timed out after {self.options['timeout']}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise GatewayError(f"cannot connect to {url}: {connect_failure(exc)}") from exc
        except aiohttp.ClientError as exc:
            raise GatewayError(f"Clawdbot {url} failed: {exc}") from exc
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = {"error": text.strip()[:200]}
        if status == 401:
            raise GatewayError(
                f"Clawdbot {url} answered 401: wrong hooks token (check webhooks.gateway.token)",
                retry=False,
            )
        if not 200 <= status < 300:
            error = answer.get("error") if isinstance(answer, Mapping) else answer
            raise GatewayError(
                f"Clawdbot {url} answered {status}: {error}", retry=status in RETRYABLE
            )
        return status, answer

    async def probe(self) -> str:
        # An empty agent hook is refused (400) after authentication and before anything runs,
        # so it checks address and token without side effects.
        try:
            await self._post("agent", {})
        except GatewayError as exc:
            if " answered 400" not in str(exc):
                raise
        finally:
            await self.close()
        return f"Clawdbot HTTP hooks at {self.base} (token accepted); {describe(self.sources)}"

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
        if instructions:  # the hook has no system-prompt field: before the message
            message = f"{instructions}\n\n{message}"
        body: dict[str, Any] = {
            "message": message,
            "name": agent_id,
            "sessionKey": hook_session_key(session),
            "deliver": deliver is not None,
        }
        unsupported = [
            name
            for name, value in (
                ("deliver.threadId", deliver and deliver.thread_id),
                ("deliver.accountId", deliver and deliver.account_id),
                ("label", label),
            )
            if value
        ]
        if unsupported:
            raise GatewayError(
                f"Clawdbot's /agent hook has no {', '.join(unsupported)}: use gateway type "
                "'clawdbot' for this handler",
                retry=False,
            )
        if deliver is not None:
            body["channel"] = deliver.channel
            if deliver.to is not None:
                body["to"] = deliver.to
        if thinking is not None:
            body["thinking"] = thinking
        if timeout is not None:
            body["timeoutSeconds"] = timeout
        _, answer = await self._post("agent", body)
        run_id = str(answer.get("runId") or idempotency_key) if isinstance(answer, Mapping) else ""
        return AgentReply("", run_id or idempotency_key, agent_id)

    async def send_message(
        self, *, channel: str, peer: str, text: str, session: str, idempotency_key: str
    ) -> Mapping[str, Any]:
        raise GatewayError(
            "the clawdbot-http gateway cannot send messages; use gateway type 'clawdbot'",
            retry=False,
        )

    async def wake(self, text: str, mode: str = "now") -> Mapping[str, Any]:
        _, answer = await self._post("wake", {"text": text, "mode": mode})
        return dict(answer) if isinstance(answer, Mapping) else {}


def create(options: Mapping[str, Any], env: GatewayEnv) -> ClawdbotHttpGateway:
    return ClawdbotHttpGateway(options, env)


create.schema = ClawdbotHttpGatewaySchema  # type: ignore[attr-defined]


@hookimpl
def register_gateways(register: Callable[[str, Any], None]) -> None:
    register("clawdbot-http", create)

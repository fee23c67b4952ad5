"""The data types plugins see. They are plain dataclasses and protocols, free of the runtime."""

from __future__ import annotations

import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from marshmallow import Schema, fields

from .frozen import quick_init

#: The event types on the bus, in the order the documentation lists them.
EVENT_TYPES = ("message_received", "agent_response", "session_started", "session_ended", "error")

# Where each event type keeps its own part in the outgoing payload.
_PAYLOAD_KEY = {"message_received": "message", "agent_response": "response"}

#: Returned by ``on_incoming`` to skip a delivery's action.
DROP = object()

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RANDOM = random.Random(secrets.token_bytes(32))


#: Every 10-bit value as two characters of the alphabet: ids are built a pair at a time.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


@functools.lru_cache(maxsize=4)
def _time_head(ms: int) -> str:
    return "".join([_PAIRS[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])


#: A random byte as a character of the alphabet: its low five bits, each value as likely.
_TO_ALPHABET = bytes.maketrans(bytes(range(256)), bytes(ord(_ALPHABET[b & 31]) for b in range(256)))
#: How many ids' random parts are made at a time.
_BATCH = 256


def _fresh_tails() -> Iterator[str]:
    """``_BATCH`` random parts of ids, 16 characters (80 bits) each, made together: one
    call each for the bytes and the alphabet, then only slices."""
    text = _RANDOM.randbytes(16 * _BATCH).translate(_TO_ALPHABET).decode("ascii")
    return iter([text[i : i + 16] for i in range(0, len(text), 16)])


_tails = _fresh_tails()


def new_id(prefix: str) -> str:
    """A sortable, unique id: ``prefix_`` + 10 chars of milliseconds + 16 random chars."""
    global _tails
    head = _time_head(int(time.time() * 1000))  # ids made in the same millisecond share it
    # Ids must be unique, not secret: random parts from a generator seeded once from the
    # system's randomness, made a batch at a time. A list iterator hands each out once, also
    # between threads; two threads finding it empty each make a batch of their own.
    tail = next(_tails, None)
    if tail is None:
        _tails = tails = _fresh_tails()
        tail = next(tails)
    return f"{prefix}_{head}{tail}"


def utc_timestamp(epoch: float | None = None) -> str:
    """ISO 8601 in UTC with a ``Z``, second precision, as in the outgoing payloads."""
    return _second(int(time.time() if epoch is None else epoch))


@functools.lru_cache(maxsize=8)
def _second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Template(fields.String):
    """A handler option that holds a Jinja2 template.

    The runtime compiles it when the config loads (so ``check`` reports template errors) and
    hands the action the rendered text in ``ctx.options``.
    """


@quick_init  # made for every delivery
@dataclass(frozen=True, slots=True)
class Delivery:
    """One incoming webhook request, as stored before it was acknowledged."""

    id: str
    hook_id: str
    received_at: float
    content_type: str
    body: bytes
    payload: Any
    headers: Mapping[str, str]
    query: Mapping[str, str]
    client_ip: str
    session: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Handler:
    """A configured handler: its id, route, action name and the action's validated options."""

    id: str
    path: str
    action: str
    options: Mapping[str, Any]
    session_mode: str = "ephemeral"
    mode: str = "async"


@dataclass(frozen=True, slots=True)
class Event:
    """An event on the bus; ``to_payload()`` is exactly what outgoing subscribers receive."""

    type: str
    data: Mapping[str, Any]
    session: str | None = None
    causation: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))
    timestamp: str = field(default_factory=utc_timestamp)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "timestamp": self.timestamp,
            "session": self.session,
        }
        payload[_PAYLOAD_KEY.get(self.type, "data")] = dict(self.data)
        if self.causation is not None:
            payload["causation"] = self.causation
        return payload


@dataclass(frozen=True, slots=True)
class AgentReply:
    """What a gateway's agent run answered."""

    text: str
    run_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an agent run's reply is sent: a chat on one of Clawdbot's channels. Since 1.2.

    ``channel`` is a channel id (``"slack"``, ``"discord"`` …) or ``"last"``, the chat the
    session's user last used; ``to`` the chat or user there (optional with ``"last"``).
    """

    channel: str
    to: str | None = None
    thread_id: str | None = None
    account_id: str | None = None


class GatewayError(Exception):
    """A gateway refused or failed a request; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class ActionError(Exception):
    """An action failed; ``retry=False`` sends the delivery straight to the dead letters."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class VerificationError(Exception):
    """An incoming request failed authentication (answered 401). Never put a secret in it."""


@runtime_checkable
class Gateway(Protocol):
    """A connection to Clawdbot (or the embedded local stand-in).

    Optional: ``async def wake(text, mode)`` (since 1.2), see ``SupportsWake``.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self) -> str:
        """Connect and report what was reached; raise ``GatewayError`` on failure."""
        ...

    async def send_message(
        self, *, channel: str, peer: str, text: str, session: str, idempotency_key: str
    ) -> Mapping[str, Any]: ...

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
        """Run the agent on ``message`` and answer its reply.

        Since 1.2, the run options of the handler, each passed only when the handler sets it
        (so a gateway written for 1.1 keeps working for handlers that use none):
        ``deliver`` where the reply is sent besides being returned (a reply that cannot be
        delivered is a failure of the run); ``thinking`` the thinking level (``off``,
        ``minimal``, ``low``, ``medium``, ``high``, ``xhigh``); ``timeout`` the run's limit in
        seconds; ``label`` a label for the run's session. Since 1.6, ``instructions``: the
        operator's trusted words for this run (a handler's ``instructions``), sent through the
        gateway's system-prompt channel where it has one, else put before the message
        (``takes_instructions(gateway)`` tells whether a gateway accepts them).
        """
        ...


@runtime_checkable
class SupportsWake(Protocol):
    """A gateway that can queue a system event for the main session (the ``wake`` action).

    ``mode`` is ``"now"`` (run a heartbeat at once) or ``"next-heartbeat"``. Since 1.2.
    """

    async def wake(self, text: str, mode: str = "now") -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class GatewayEnv:
    """What the runtime gives a gateway factory."""

    state_dir: str
    emit: Callable[[Event], None]
    logger: logging.Logger


GatewayFactory = Callable[[Mapping[str, Any], GatewayEnv], Gateway]


@dataclass(slots=True)
class ActionContext:
    """Everything an action's ``run`` needs for one delivery."""

    delivery: Delivery
    handler: Handler
    #: The handler's options, validated by the action's schema, templates rendered.
    options: Mapping[str, Any]
    session: str
    #: Stable across retries and restarts: pass it on so the effect happens once.
    idempotency_key: str
    gateway: Gateway
    #: The runtime's shared ``aiohttp.ClientSession``.
    http: Any
    #: ``await ctx.publish(event)``: returns once the event's outgoing deliveries are stored.
    publish: Callable[[Event], Awaitable[None]]
    logger: logging.Logger
    #: Who the handler's verifier says sent the delivery (``"verified: github"``, or
    #: ``"not verified (public endpoint)"``); shown inside the untrusted-content boundary.
    #: Since 1.6.
    sender: str | None = None
    #: The handler's content policy for text bound for an agent: returns the text (spans
    #: quarantined) or raises ``ActionError`` to block it. ``agent_prompt`` applies it.
    #: Since 1.6.
    screen: Callable[[str], str] | None = None


@dataclass(frozen=True, slots=True)
class PluginEnv:
    """What the runtime hands a registered object's optional ``async def start(env)``.

    An action or transport that keeps state between deliveries (timers, files, connections)
    defines ``start`` and ``close``; the runtime calls ``start`` once after the gateway is up
    and before any delivery runs, and ``close`` once at shutdown. Since 1.1.
    """

    #: The name of the plugin that registered the object (its entry-point name).
    plugin: str
    #: ``webhooks.plugins.settings.<plugin>`` from the config, or an empty mapping.
    settings: Mapping[str, Any]
    #: The runtime's state directory, for plugins that keep files of their own.
    state_dir: str
    gateway: Gateway
    #: The runtime's shared ``aiohttp.ClientSession``.
    http: Any
    #: ``await env.publish(event)``: returns once the event's outgoing deliveries are stored.
    publish: Callable[[Event], Awaitable[None]]
    logger: logging.Logger


@runtime_checkable
class Action(Protocol):
    """A handler action: ``schema`` validates its options, ``run`` does the work.

    Optional: ``async def start(env: PluginEnv)`` and ``async def close()`` for actions that
    keep state between deliveries (since 1.1).
    """

    schema: type[Schema]

    async def run(self, ctx: ActionContext) -> Any: ...


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """One attempt of an outgoing delivery."""

    url: str
    method: str
    headers: Mapping[str, str]
    body: bytes
    timeout: float
    delivery_id: str
    subscription_id: str


@dataclass(frozen=True, slots=True)
class OutgoingResponse:
    """What an attempt got back; ``status`` is ``None`` when no HTTP answer arrived."""

    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


@runtime_checkable
class Transport(Protocol):
    """Sends outgoing deliveries. Transport errors go in ``OutgoingResponse.error``.

    Optional: ``async def start(env: PluginEnv)`` and ``async def close()``, as for actions.
    """

    async def send(self, request: OutgoingRequest) -> OutgoingResponse: ...


@quick_init  # made for every request
@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a verifier sees of an incoming request."""

    method: str
    path: str
    #: Look names up in lower case; the server passes a case-insensitive mapping.
    headers: Mapping[str, str]
    body: bytes
    client_ip: str
    now: float
    #: The query string as sent, without the ``?`` (since 1.5).
    query_string: str = ""


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a verifier answers a sender's handshake with, at once and instead of a delivery:
    nothing is stored and no action runs. ``body`` is sent as JSON with ``status``. Since 1.3.

    Providers check an endpoint before they deliver to it: Slack's ``url_verification`` wants
    its ``challenge`` back, a Discord ``PING`` wants ``{"type": 1}``.
    """

    body: Any
    status: int = 200


@runtime_checkable
class Verifier(Protocol):
    """An incoming authentication scheme.

    ``verify`` raises ``VerificationError`` to refuse; it may return the provider's delivery id
    (``webhook-id``, ``X-GitHub-Delivery`` …) so duplicates are recognised.

    Optional: ``def sign(body, options, now) -> dict[str, str]``, the headers a sender would add
    to ``body`` at Unix time ``now``; ``clawdbot-webhooks send-test`` uses it. ``options`` may
    then also hold ``signingKey``: the private key given to ``send-test --signing-key``, for
    schemes whose senders sign with a key the receiver never holds (since 1.3).

    Optional: ``def sample(payload, now) -> tuple[bytes, str]``, ``send-test``'s sample
    ``payload`` (a dict) as its provider would send it: the body and its content type (a
    form for Twilio, a Pub/Sub envelope …; since 1.3).

    Optional: ``credential_headers``, names of request headers that carry the secret itself;
    they are never stored with a delivery (since 1.3).

    ``verify`` may also be a coroutine function, for schemes that fetch keys (since 1.3).

    Optional: ``def handshake(request, options) -> Handshake | None``, called only after
    ``verify`` accepted the request: a ``Handshake`` is answered at once and the request goes
    no further (since 1.3).

    Optional: ``def present(payload, options) -> Any``, the payload as templates and actions
    see it (an envelope unwrapped, say). It is applied again on every attempt, so it must
    depend on nothing but its arguments (since 1.3).
    """

    schema: type[Schema]

    def verify(
        self, request: SignedRequest, options: Mapping[str, Any]
    ) -> str | Awaitable[str | None] | None: ...


@dataclass(frozen=True, slots=True)
class CommandEnv:
    """What a plugin's command (``register_commands``) finds as click's context object. Since 1.4.

    Each function takes the command's ``--config`` value (``None``: the default config file)
    and loads and validates that config as every command does, exiting with status 2 and the
    config's errors when it is wrong.
    """

    #: ``state_dir(config_path)``: the runtime's state directory.
    state_dir: Callable[[str | None], str]
    #: ``settings(config_path, plugin)``: ``webhooks.plugins.settings.<plugin>``.
    settings: Callable[[str | None, str], Mapping[str, Any]]

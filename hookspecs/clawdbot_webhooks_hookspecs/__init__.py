"""The stable plugin API of clawdbot-webhooks.

Plugins depend on this small distribution, never on the runtime: it holds the pluggy markers,
the hook specifications and the data types a plugin sees.
"""

from __future__ import annotations

from .ids import derived_event_id, derived_id
from .markers import PROJECT_NAME, hookimpl, hookspec
from .secrets import bearer_token, matches_any
from .signing import decode_secret, sign_standard
from .types import (
    DROP,
    EVENT_TYPES,
    Action,
    ActionContext,
    ActionError,
    AgentReply,
    CommandEnv,
    Delivery,
    Event,
    Gateway,
    GatewayEnv,
    GatewayError,
    GatewayFactory,
    Handler,
    Handshake,
    OutgoingRequest,
    OutgoingResponse,
    PluginEnv,
    ReplyTarget,
    SignedRequest,
    SupportsWake,
    Template,
    Transport,
    VerificationError,
    Verifier,
    new_id,
    utc_timestamp,
)

__all__ = [
    "DROP",
    "EVENT_TYPES",
    "PROJECT_NAME",
    "Action",
    "ActionContext",
    "ActionError",
    "AgentReply",
    "CommandEnv",
    "Delivery",
    "Event",
    "Gateway",
    "GatewayEnv",
    "GatewayError",
    "GatewayFactory",
    "Handler",
    "Handshake",
    "OutgoingRequest",
    "OutgoingResponse",
    "PluginEnv",
    "ReplyTarget",
    "SignedRequest",
    "SupportsWake",
    "Template",
    "Transport",
    "VerificationError",
    "Verifier",
    "bearer_token",
    "decode_secret",
    "derived_event_id",
    "derived_id",
    "hookimpl",
    "hookspec",
    "matches_any",
    "new_id",
    "sign_standard",
    "utc_timestamp",
]

"""Built-in incoming authentication schemes, one module per provider.

Each verifier has a marshmallow ``schema`` for its ``verify: {...}`` options (the config loader
validates them at load time and hands ``verify`` the *loaded* options) and a ``verify(request,
options)`` that raises ``VerificationError`` to refuse, or returns the sender's delivery id so
a redelivery is recognised.

Each also has ``sign(body, options, now)``: the headers its provider would send, made with the
first secret, so ``clawdbot-webhooks send-test`` can fire a request that passes the real check;
signing and checking share one computation per scheme.

Rules every scheme here keeps: every secret in ``secrets`` is tried (rotation) and every
comparison is constant-time and never stops at the first match; a timestamp outside
``tolerance`` seconds of ``request.now`` is refused (replay); error messages never contain a
secret or the expected signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clawdbot_webhooks_hookspecs import bearer_token, hookimpl, matches_any

from clawdbot_webhooks.builtin.verifiers.common import (
    DEFAULT_TOLERANCE,
    MAX_SIGNATURES,
    SecretsSchema,
    TimedSchema,
    any_equal,
    check_timestamp,
)
from clawdbot_webhooks.builtin.verifiers.discord import Discord
from clawdbot_webhooks.builtin.verifiers.generic_hmac import GenericHMAC
from clawdbot_webhooks.builtin.verifiers.github import GitHub
from clawdbot_webhooks.builtin.verifiers.google import GoogleOIDC
from clawdbot_webhooks.builtin.verifiers.linear import Linear
from clawdbot_webhooks.builtin.verifiers.public import Public
from clawdbot_webhooks.builtin.verifiers.secret import Basic, Bearer, GitLab, SharedSecret, Telegram
from clawdbot_webhooks.builtin.verifiers.sentry import Sentry
from clawdbot_webhooks.builtin.verifiers.shopify import Shopify
from clawdbot_webhooks.builtin.verifiers.slack import Slack
from clawdbot_webhooks.builtin.verifiers.standard import StandardWebhooks
from clawdbot_webhooks.builtin.verifiers.stripe import Stripe
from clawdbot_webhooks.builtin.verifiers.twilio import Twilio

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_SIGNATURES",
    "Basic",
    "Bearer",
    "Discord",
    "GenericHMAC",
    "GitHub",
    "GitLab",
    "GoogleOIDC",
    "Linear",
    "Public",
    "SecretsSchema",
    "Sentry",
    "SharedSecret",
    "Shopify",
    "Slack",
    "StandardWebhooks",
    "Stripe",
    "Telegram",
    "TimedSchema",
    "Twilio",
    "any_equal",
    "bearer_token",
    "check_timestamp",
    "matches_any",
    "register_verifiers",
]


@hookimpl
def register_verifiers(register: Callable[[str, Any], None]) -> None:
    register("none", Public())
    register("shared-secret", SharedSecret())
    register("bearer", Bearer())
    register("github", GitHub())
    register("standard-webhooks", StandardWebhooks())
    register("stripe", Stripe())
    register("slack", Slack())
    register("hmac", GenericHMAC())
    register("gitlab", GitLab())
    register("shopify", Shopify())
    register("twilio", Twilio())
    register("discord", Discord())
    register("linear", Linear())
    register("sentry", Sentry())
    register("telegram", Telegram())
    register("basic", Basic())
    register("google-oidc", GoogleOIDC())

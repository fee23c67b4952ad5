"""Sentry integrations: ``Sentry-Hook-Signature``, the hex HMAC-SHA256 of the body keyed by the
integration's client secret."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest

from clawdbot_webhooks.builtin.verifiers.common import (
    SecretsSchema,
    first_secret,
    hmac_digest,
    require_match,
    required_header,
    secrets_of,
)


class Sentry:
    """The delivery id is ``Request-ID``. Only the body is signed: neither the id nor
    ``Sentry-Hook-Timestamp`` proves anything, so the id recognises Sentry's redeliveries,
    not a captured delivery sent again under another id."""

    class schema(SecretsSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = required_header(request, "Sentry-Hook-Signature").strip().lower()
        expected = (self._digest(s, request.body) for s in secrets_of(options))
        require_match(given, expected, "Sentry-Hook-Signature")
        return request.headers.get("request-id") or None

    @staticmethod
    def _digest(secret: str, body: bytes) -> str:
        return hmac_digest("sha256", secret.encode(), body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {
            "Sentry-Hook-Signature": self._digest(first_secret(options), body),
            "Sentry-Hook-Resource": "event_alert",
            "Sentry-Hook-Timestamp": str(now),
            "Request-ID": str(uuid.uuid4()),
        }

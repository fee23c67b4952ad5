"""Shopify: ``X-Shopify-Hmac-Sha256``, the base64 HMAC-SHA256 of the body keyed by the app's
client secret."""

from __future__ import annotations

import base64
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


class Shopify:
    """The delivery id is ``X-Shopify-Webhook-Id`` (the same on every retry)."""

    class schema(SecretsSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = required_header(request, "X-Shopify-Hmac-Sha256").strip()
        expected = (self._digest(s, request.body) for s in secrets_of(options))
        require_match(given, expected, "X-Shopify-Hmac-Sha256")
        return request.headers.get("x-shopify-webhook-id") or None

    @staticmethod
    def _digest(secret: str, body: bytes) -> str:
        return base64.b64encode(hmac_digest("sha256", secret.encode(), body)).decode()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {
            "X-Shopify-Hmac-Sha256": self._digest(first_secret(options), body),
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        }

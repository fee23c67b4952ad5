"""Linear: ``Linear-Signature``, the hex HMAC-SHA256 of the body keyed by the webhook's signing
secret; the body's ``webhookTimestamp`` (milliseconds) must be recent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import fields, validate

from clawdbot_webhooks.builtin.verifiers.common import (
    JSON_TYPE,
    SecretsSchema,
    first_secret,
    hmac_digest,
    json_object,
    require_match,
    required_header,
    secrets_of,
)

#: Linear's own advice: refuse a delivery whose timestamp is more than a minute off.
LINEAR_TOLERANCE = 60.0


class Linear:
    """The delivery id is ``Linear-Delivery``. The timestamp is checked after the signature,
    since only then is it known to be Linear's."""

    class schema(SecretsSchema):
        tolerance = fields.Float(
            load_default=LINEAR_TOLERANCE, validate=validate.Range(min=1, max=86_400 * 7)
        )

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = required_header(request, "Linear-Signature").strip().lower()
        expected = (self._digest(s, request.body) for s in secrets_of(options))
        require_match(given, expected, "Linear-Signature")
        document = json_object(request.body) or {}
        stamp = document.get("webhookTimestamp")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            raise VerificationError("webhookTimestamp missing from the body")
        tolerance = float(options.get("tolerance", LINEAR_TOLERANCE))
        if abs(request.now - stamp / 1000) > tolerance:
            raise VerificationError(
                f"webhookTimestamp is more than {tolerance:g}s away from the server's clock "
                "(stale or replayed request)"
            )
        return request.headers.get("linear-delivery") or None

    @staticmethod
    def _digest(secret: str, body: bytes) -> str:
        return hmac_digest("sha256", secret.encode(), body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        # Linear signs a body that carries its timestamp: a sample without one cannot pass.
        return {
            "Linear-Signature": self._digest(first_secret(options), body),
            "Linear-Event": "Issue",
            "Linear-Delivery": str(uuid.uuid4()),
        }

    def sample(self, payload: dict[str, Any], now: int) -> tuple[bytes, str]:
        """``send-test``'s sample as Linear would send it: with ``webhookTimestamp``."""
        return json.dumps({**payload, "webhookTimestamp": now * 1000}).encode(), JSON_TYPE

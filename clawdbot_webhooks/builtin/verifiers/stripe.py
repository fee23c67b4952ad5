"""Stripe: ``Stripe-Signature`` with a timestamp and HMAC-SHA256 signatures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError

from clawdbot_webhooks.builtin.verifiers.common import (
    DEFAULT_TOLERANCE,
    MAX_SIGNATURES,
    TimedSchema,
    any_equal,
    check_timestamp,
    first_secret,
    hmac_digest,
    json_field,
    required_header,
    secrets_of,
)


class Stripe:
    """``Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of ``t.body`` keyed by
    the whole endpoint secret; the delivery id is the event's ``id`` in the body."""

    class schema(TimedSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        stamp: str | None = None
        given: list[bytes] = []
        for item in required_header(request, "Stripe-Signature").split(","):
            key, _, value = item.strip().partition("=")
            if key == "t":
                stamp = value
            elif key == "v1" and len(given) < MAX_SIGNATURES:
                given.append(value.strip().lower().encode("utf-8", "replace"))
        if stamp is None or not given:
            raise VerificationError("Stripe-Signature must carry t= and v1=")
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(stamp, request, tolerance, "Stripe-Signature timestamp")
        expected = (self._digest(s, stamp, request.body).encode() for s in secrets_of(options))
        if not any_equal(given, expected):
            raise VerificationError("Stripe-Signature does not match the body")
        return json_field(request.body, "id")

    @staticmethod
    def _digest(secret: str, stamp: str, body: bytes) -> str:
        return hmac_digest("sha256", secret.encode(), f"{stamp}.".encode() + body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        digest = self._digest(first_secret(options), str(now), body)
        return {"Stripe-Signature": f"t={now},v1={digest}"}

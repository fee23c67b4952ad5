"""Slack: ``X-Slack-Signature`` over the version, the timestamp and the body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import Handshake, SignedRequest, VerificationError

from clawdbot_webhooks.builtin.verifiers.common import (
    DEFAULT_TOLERANCE,
    TimedSchema,
    any_equal,
    check_timestamp,
    first_secret,
    hmac_digest,
    json_field,
    json_object,
    required_header,
    secrets_of,
)


class Slack:
    """``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:timestamp:body">`` with
    ``X-Slack-Request-Timestamp``; the delivery id is the Events API ``event_id``. A signed
    ``url_verification`` (Slack checking the Events API URL) is answered with its challenge."""

    class schema(TimedSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = required_header(request, "X-Slack-Signature").strip()
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(
            required_header(request, "X-Slack-Request-Timestamp"),
            request,
            tolerance,
            "X-Slack-Request-Timestamp",
        )
        expected = (self._signature(s, stamp, request.body).encode() for s in secrets_of(options))
        if not any_equal([given.lower().encode("utf-8", "replace")], expected):
            raise VerificationError("X-Slack-Signature does not match the body")
        return json_field(request.body, "event_id")

    @staticmethod
    def _signature(secret: str, stamp: str, body: bytes) -> str:
        return "v0=" + hmac_digest("sha256", secret.encode(), f"v0:{stamp}:".encode() + body).hex()

    def handshake(self, request: SignedRequest, options: Mapping[str, Any]) -> Handshake | None:
        if b"url_verification" not in request.body:  # most requests: no need to parse
            return None
        document = json_object(request.body)
        if document is None or document.get("type") != "url_verification":
            return None
        return Handshake({"challenge": document.get("challenge")})

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {
            "X-Slack-Request-Timestamp": str(now),
            "X-Slack-Signature": self._signature(first_secret(options), str(now), body),
        }

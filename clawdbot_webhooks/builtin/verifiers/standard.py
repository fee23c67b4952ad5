"""Standard Webhooks and Svix."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import (
    SignedRequest,
    VerificationError,
    decode_secret,
    sign_standard,
)
from marshmallow import ValidationError, validates_schema

from clawdbot_webhooks.builtin.verifiers.common import (
    DEFAULT_TOLERANCE,
    MAX_SIGNATURES,
    TimedSchema,
    any_equal,
    check_timestamp,
    first_secret,
    required_header,
    secrets_of,
)


class StandardWebhooks:
    """Standard Webhooks / Svix: ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature: v1,<base64> [v1,<base64> ...]`` (or the same with ``svix-``), an
    HMAC-SHA256 of ``id.timestamp.body`` keyed by the base64 part of a ``whsec_`` secret."""

    class schema(TimedSchema):
        @validates_schema
        def _base64(self, data: dict[str, Any], **kwargs: Any) -> None:
            for name, value in (("secret", data.get("secret")), ("secrets", data.get("secrets"))):
                for secret in [value] if isinstance(value, str) else value or []:
                    try:
                        decode_secret(secret)
                    except ValueError as exc:
                        raise ValidationError(str(exc), name) from None

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        prefix = "webhook-" if "webhook-signature" in request.headers else "svix-"
        if f"{prefix}signature" not in request.headers:
            raise VerificationError("missing webhook-signature header")
        msg_id = required_header(request, f"{prefix}id").strip()
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(
            required_header(request, f"{prefix}timestamp"), request, tolerance, f"{prefix}timestamp"
        )
        given = request.headers[f"{prefix}signature"].split()[:MAX_SIGNATURES]
        expected = []
        for secret in secrets_of(options):
            try:
                expected.append(sign_standard(secret, msg_id, stamp, request.body).encode())
            except ValueError:
                continue  # not loaded through the schema: a bad secret simply never matches
        if not any_equal((g.encode("utf-8", "replace") for g in given), expected):
            raise VerificationError(f"no valid signature in {prefix}signature")
        return msg_id

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        msg_id = f"msg_{uuid.uuid4().hex}"
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign_standard(first_secret(options), msg_id, now, body),
        }

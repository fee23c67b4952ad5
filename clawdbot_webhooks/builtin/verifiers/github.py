"""GitHub: an HMAC-SHA256 of the body in ``X-Hub-Signature-256``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import fields, validate

from clawdbot_webhooks.builtin.verifiers.common import (
    SecretsSchema,
    first_secret,
    hmac_digest,
    require_match,
    required_header,
    secrets_of,
)


class GitHub:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; the delivery id is
    ``X-GitHub-Delivery`` (the same on a redelivery)."""

    class schema(SecretsSchema):
        header = fields.String(load_default="X-Hub-Signature-256", validate=validate.Length(min=1))

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        header = options.get("header") or "X-Hub-Signature-256"
        given = required_header(request, header).strip()
        scheme, _, digest = given.partition("=")
        if scheme.lower() != "sha256" or not digest:
            raise VerificationError(f"{header} must look like sha256=<hex>")
        expected = (self._digest(s, request.body) for s in secrets_of(options))
        require_match(digest.strip().lower(), expected, header)
        return request.headers.get("x-github-delivery") or None

    @staticmethod
    def _digest(secret: str, body: bytes) -> str:
        return hmac_digest("sha256", secret.encode(), body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        header = options.get("header") or "X-Hub-Signature-256"
        return {
            header: "sha256=" + self._digest(first_secret(options), body),
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
        }

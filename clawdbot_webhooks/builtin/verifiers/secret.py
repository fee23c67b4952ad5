"""Schemes that send a secret itself: a header of its own, or a bearer token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import fields, validate

from clawdbot_webhooks.builtin.verifiers.common import (
    SecretsSchema,
    bearer_token,
    first_secret,
    matches_any,
    secrets_of,
)


class SharedSecret:
    """The secret itself in a header (``X-Webhook-Secret`` by default)."""

    class schema(SecretsSchema):
        header = fields.String(load_default="X-Webhook-Secret", validate=validate.Length(min=1))

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        header = options.get("header") or "X-Webhook-Secret"
        given = request.headers.get(header.lower())
        if given is None:
            raise VerificationError(f"missing {header} header")
        if not matches_any(given, secrets_of(options)):
            raise VerificationError(f"wrong secret in {header} header")
        return None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {options.get("header") or "X-Webhook-Secret": first_secret(options)}


class Bearer:
    """``Authorization: Bearer <token>``, as Clawdbot's own hooks use."""

    class schema(SecretsSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise VerificationError("missing Authorization: Bearer token")
        if not matches_any(token, secrets_of(options)):
            raise VerificationError("wrong bearer token")
        return None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {first_secret(options)}"}

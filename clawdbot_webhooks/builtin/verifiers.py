"""Built-in incoming authentication schemes."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError, hookimpl
from marshmallow import Schema, fields


def _secrets(options: Mapping[str, Any]) -> list[str]:
    found = list(options.get("secrets") or [])
    if options.get("secret"):
        found.insert(0, options["secret"])
    return found


def matches_any(given: str, secrets: list[str]) -> bool:
    """Constant-time comparison against every secret (rotation), never stopping early."""
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(given.encode(), secret.encode())
    return ok


class SharedSecret:
    """The secret itself in a header (``X-Webhook-Secret`` by default)."""

    class schema(Schema):
        secret = fields.String(load_default=None)
        secrets = fields.List(fields.String(), load_default=list)
        header = fields.String(load_default="X-Webhook-Secret")

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        header = options.get("header") or "X-Webhook-Secret"
        given = request.headers.get(header.lower())
        if given is None:
            raise VerificationError(f"missing {header} header")
        if not matches_any(given, _secrets(options)):
            raise VerificationError(f"wrong secret in {header} header")
        return None


class Bearer:
    """``Authorization: Bearer <token>``, as Clawdbot's own hooks use."""

    class schema(Schema):
        secret = fields.String(load_default=None)
        secrets = fields.List(fields.String(), load_default=list)

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        value = request.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise VerificationError("missing Authorization: Bearer token")
        if not matches_any(token.strip(), _secrets(options)):
            raise VerificationError("wrong bearer token")
        return None


@hookimpl
def register_verifiers(register: Callable[[str, Any], None]) -> None:
    register("shared-secret", SharedSecret())
    register("bearer", Bearer())

"""Schemes that send a secret itself: a header of its own (GitLab, Telegram), a bearer token or
HTTP basic credentials."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from clawdbot_webhooks.builtin.verifiers.common import (
    SecretsSchema,
    bearer_token,
    first_secret,
    json_field,
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


class GitLab:
    """GitLab: the webhook's secret token itself in ``X-Gitlab-Token``. The delivery id is
    ``Idempotency-Key`` (the same on every retry), else ``X-Gitlab-Event-UUID``."""

    credential_headers = ("X-Gitlab-Token",)

    class schema(SecretsSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = request.headers.get("x-gitlab-token")
        if given is None:
            raise VerificationError("missing X-Gitlab-Token header")
        if not matches_any(given, secrets_of(options)):
            raise VerificationError("wrong secret token in X-Gitlab-Token header")
        headers = request.headers
        return headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid") or None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {
            "X-Gitlab-Token": first_secret(options),
            "X-Gitlab-Event": "System Hook",
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "Idempotency-Key": str(uuid.uuid4()),
        }


class Telegram:
    """Telegram bots (``setWebhook`` with ``secret_token``): the token itself in
    ``X-Telegram-Bot-Api-Secret-Token``; the delivery id is the update's ``update_id``."""

    credential_headers = ("X-Telegram-Bot-Api-Secret-Token",)

    class schema(SecretsSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = request.headers.get("x-telegram-bot-api-secret-token")
        if given is None:
            raise VerificationError("missing X-Telegram-Bot-Api-Secret-Token header")
        if not matches_any(given, secrets_of(options)):
            raise VerificationError("wrong secret token in X-Telegram-Bot-Api-Secret-Token")
        update = json_field(request.body, "update_id")
        return None if update is None else f"update:{update}"

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {"X-Telegram-Bot-Api-Secret-Token": first_secret(options)}


class Basic:
    """HTTP basic authentication (``Authorization: Basic``), as Alertmanager and Grafana send
    it: options ``username`` and ``password`` (or ``passwords``, any of them, for rotation)."""

    class schema(Schema):
        class Meta:
            unknown = RAISE

        username = fields.String(required=True, validate=validate.Length(min=1))
        password = fields.String(load_default=None, validate=validate.Length(min=1))
        passwords = fields.List(
            fields.String(validate=validate.Length(min=1)),
            load_default=list,
            validate=validate.Length(max=16),
        )

        @validates_schema
        def _one_password(self, data: dict[str, Any], **kwargs: Any) -> None:
            if not data.get("password") and not data.get("passwords"):
                raise ValidationError("required: set password or passwords", "password")
            if ":" in data.get("username", ""):
                raise ValidationError("must not contain ':'", "username")

    @staticmethod
    def _credentials(options: Mapping[str, Any]) -> list[str]:
        found = [options["password"]] if options.get("password") else []
        found += [p for p in options.get("passwords") or [] if p not in found]
        return [f"{options['username']}:{p}" for p in found]

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        scheme, _, encoded = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise VerificationError("missing Authorization: Basic credentials")
        try:
            given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise VerificationError("Authorization: Basic is not base64 of user:password") from None
        # user and password compared as one string: no early answer about which was wrong
        if not matches_any(given, self._credentials(options)):
            raise VerificationError("wrong username or password")
        return None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        pair = self._credentials(options)[0].encode("utf-8")
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

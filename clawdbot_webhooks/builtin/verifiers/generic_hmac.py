"""Any "HMAC of the body in a header" scheme, configured field by field."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from clawdbot_webhooks.builtin.verifiers.common import (
    ALGORITHMS,
    DEFAULT_TOLERANCE,
    TimedSchema,
    check_timestamp,
    first_secret,
    hmac_digest,
    require_match,
    required_header,
    secrets_of,
)


class GenericHMAC:
    """Any "HMAC of the body in a header" scheme: ``header``, ``algorithm`` (sha1, sha256,
    sha512), ``encoding`` (hex, base64), optional ``prefix`` (``sha256=``), optional
    ``timestampHeader`` with ``signedPayload`` saying how it joins the body (default
    ``"{timestamp}.{body}"``), optional ``idHeader`` naming the sender's delivery id."""

    class schema(TimedSchema):
        header = fields.String(required=True, validate=validate.Length(min=1))
        algorithm = fields.String(load_default="sha256", validate=validate.OneOf(ALGORITHMS))
        encoding = fields.String(load_default="hex", validate=validate.OneOf(["hex", "base64"]))
        prefix = fields.String(load_default="")
        timestampHeader = fields.String(load_default=None, validate=validate.Length(min=1))
        signedPayload = fields.String(load_default=None)
        idHeader = fields.String(load_default=None, validate=validate.Length(min=1))

        @validates_schema
        def _payload_shape(self, data: dict[str, Any], **kwargs: Any) -> None:
            shape = data.get("signedPayload")
            if shape is None:
                return
            if shape.count("{body}") != 1:
                raise ValidationError("must contain {body} exactly once", "signedPayload")
            if "{timestamp}" in shape and not data.get("timestampHeader"):
                raise ValidationError(
                    "uses {timestamp} but timestampHeader is not set", "signedPayload"
                )

        @post_load
        def _default_payload(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            if data.get("signedPayload") is None:
                data["signedPayload"] = (
                    "{timestamp}.{body}" if data.get("timestampHeader") else "{body}"
                )
            return data

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        header = options["header"]
        value = required_header(request, header).strip()
        prefix = options.get("prefix") or ""
        if prefix:
            if not value.lower().startswith(prefix.lower()):
                raise VerificationError(f"{header} must start with {prefix!r}")
            value = value[len(prefix) :].strip()
        stamp = ""
        if options.get("timestampHeader"):
            name = options["timestampHeader"]
            tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
            stamp = check_timestamp(required_header(request, name), request, tolerance, name)
        hexed = options.get("encoding", "hex") == "hex"
        expected = (self._digest(options, s, stamp, request.body) for s in secrets_of(options))
        require_match(value.lower() if hexed else value, expected, header)
        id_header = options.get("idHeader")
        return (request.headers.get(id_header.lower()) or None) if id_header else None

    @staticmethod
    def _digest(options: Mapping[str, Any], secret: str, stamp: str, body: bytes) -> str:
        """The encoded HMAC of the signed payload (``signedPayload`` with ``{timestamp}``)."""
        before, _, after = (options.get("signedPayload") or "{body}").partition("{body}")
        signed = (
            before.replace("{timestamp}", stamp).encode()
            + body
            + after.replace("{timestamp}", stamp).encode()
        )
        digest = hmac_digest(options.get("algorithm") or "sha256", secret.encode(), signed)
        hexed = options.get("encoding", "hex") == "hex"
        return digest.hex() if hexed else base64.b64encode(digest).decode()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        stamp = str(now) if options.get("timestampHeader") else ""
        digest = self._digest(options, first_secret(options), stamp, body)
        headers = {options["header"]: (options.get("prefix") or "") + digest}
        if stamp:
            headers[options["timestampHeader"]] = stamp
        if options.get("idHeader"):
            headers[options["idHeader"]] = f"test_{uuid.uuid4().hex}"
        return headers

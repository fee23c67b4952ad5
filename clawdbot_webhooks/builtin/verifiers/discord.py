"""Discord interactions: ``X-Signature-Ed25519``, an Ed25519 signature of
``X-Signature-Timestamp`` followed by the body, checked with the application's public key
(``cryptography`` does the curve arithmetic). A ``PING`` is answered ``{"type": 1}``."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import Handshake, SignedRequest, VerificationError
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from clawdbot_webhooks.builtin.verifiers.common import (
    DEFAULT_TOLERANCE,
    JSON_TYPE,
    check_timestamp,
    json_field,
    json_object,
    require_module,
    required_header,
)

#: An interaction's ``type`` when Discord checks the endpoint (and the answer's).
PING = 1


def _hex_key(text: str, size: int) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("not hex") from None
    if len(key) != size:
        raise ValueError(f"must be {size} bytes ({size * 2} hex digits)")
    return key


@functools.lru_cache(maxsize=64)
def _public_key(text: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(_hex_key(text, 32))


class Discord:
    """Options: ``publicKey`` (hex, from the application's General Information page), or
    ``publicKeys`` for rotation. The delivery id is the interaction's ``id``."""

    class schema(Schema):
        class Meta:
            unknown = RAISE

        publicKey = fields.String(load_default=None, validate=validate.Length(min=1))
        publicKeys = fields.List(
            fields.String(validate=validate.Length(min=1)),
            load_default=list,
            validate=validate.Length(max=16),
        )
        tolerance = fields.Float(
            load_default=DEFAULT_TOLERANCE, validate=validate.Range(min=1, max=86_400 * 7)
        )

        @validates_schema
        def _keys(self, data: dict[str, Any], **kwargs: Any) -> None:
            if not data.get("publicKey") and not data.get("publicKeys"):
                raise ValidationError("required: set publicKey or publicKeys", "publicKey")
            require_module("cryptography.hazmat", "discord", "type")
            for name in ("publicKey", "publicKeys"):
                value = data.get(name)
                for i, key in enumerate([value] if isinstance(value, str) else value or []):
                    try:
                        _public_key(key)
                    except ValueError as exc:
                        where = {i: [str(exc)]} if name == "publicKeys" else [str(exc)]
                        raise ValidationError({name: where}) from None

    @staticmethod
    def _keys(options: Mapping[str, Any]) -> list[str]:
        first = [options["publicKey"]] if options.get("publicKey") else []
        return first + [k for k in options.get("publicKeys") or [] if k not in first]

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        from cryptography.exceptions import InvalidSignature

        given = required_header(request, "X-Signature-Ed25519").strip()
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(
            required_header(request, "X-Signature-Timestamp"),
            request,
            tolerance,
            "X-Signature-Timestamp",
        )
        try:
            signature = _hex_key(given, 64)
        except ValueError as exc:
            raise VerificationError(f"X-Signature-Ed25519: {exc}") from None
        signed = stamp.encode() + request.body
        ok = False
        for key in self._keys(options):  # every key tried: the time says nothing
            try:
                _public_key(key).verify(signature, signed)
                ok = True
            except (InvalidSignature, ValueError):
                pass
        if not ok:
            raise VerificationError("X-Signature-Ed25519 does not match the body")
        return json_field(request.body, "id")

    def handshake(self, request: SignedRequest, options: Mapping[str, Any]) -> Handshake | None:
        document = json_object(request.body)
        if document is None or document.get("type") != PING:
            return None
        return Handshake({"type": PING})

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        """Only Discord holds the private key: ``send-test --signing-key`` names a file with
        one (hex, 32-byte seed) whose public key is configured."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        text = options.get("signingKey")
        if not text:
            raise ValueError("discord requests are signed with Discord's private key: pass one")
        try:
            seed = _hex_key(text, 32)
        except ValueError as exc:
            raise ValueError(f"the signing key (an Ed25519 seed): {exc}") from None
        key = Ed25519PrivateKey.from_private_bytes(seed)
        signature = key.sign(str(now).encode() + body)
        return {"X-Signature-Ed25519": signature.hex(), "X-Signature-Timestamp": str(now)}

    def sample(self, payload: dict[str, Any], now: int) -> tuple[bytes, str]:
        """``send-test``'s sample as Discord sends a slash command."""
        interaction = {
            "id": str(uuid.uuid4().int >> 64),
            "application_id": "0",
            "type": 2,
            "token": "test",
            "version": 1,
            "data": {"id": "0", "name": "test", "type": 1, "options": []},
            "member": {"user": {"id": "0", "username": "clawdbot-webhooks send-test"}},
            "channel_id": "0",
            "test": payload,
        }
        return json.dumps(interaction).encode(), JSON_TYPE

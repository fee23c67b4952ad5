"""What the built-in verifiers share: constant-time comparisons, timestamps within the replay
window, reading headers, and the ``secret``/``secrets`` option schemas."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError

# Kept here for the verifiers that import them from this module; they are the plugin API's.
from clawdbot_webhooks_hookspecs import bearer_token as bearer_token
from clawdbot_webhooks_hookspecs import matches_any as matches_any
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

#: Five minutes either way, what Standard Webhooks, Stripe and Slack all recommend.
DEFAULT_TOLERANCE = 300.0
JSON_TYPE = "application/json"
#: More candidate signatures than this in one header is an attack, not key rotation.
MAX_SIGNATURES = 16
_DIGITS = re.compile(r"[0-9]{1,15}")
ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


# ------------------------------------------------------------------------------- helpers


def secrets_of(options: Mapping[str, Any]) -> list[str]:
    """``secret`` first, then ``secrets`` (the loaded options already merged them)."""
    found = [s for s in options.get("secrets") or [] if s]
    secret = options.get("secret")
    if secret and secret not in found:
        found.insert(0, secret)
    return found


def first_secret(options: Mapping[str, Any]) -> str:
    return secrets_of(options)[0]


def any_equal(given: Iterable[bytes], expected: Iterable[bytes]) -> bool:
    """Whether any given value equals any expected one: every pair is compared in constant
    time and the loop never stops early, so timing says nothing about which one matched."""
    candidates = list(given)
    ok = False
    for want in expected:
        for have in candidates:
            ok |= hmac.compare_digest(have, want)
    return ok


def require_match(given: str, expected: Iterable[str], header: str) -> None:
    """Refuse the request unless ``given`` (the signature in ``header``) equals one of the
    ``expected`` ones, each compared as ``any_equal`` compares: one per rotated secret."""
    if not any_equal([given.encode("utf-8", "replace")], (e.encode() for e in expected)):
        raise VerificationError(f"{header} does not match the body")


def hmac_digest(algorithm: str, key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, ALGORITHMS[algorithm])


def required_header(request: SignedRequest, name: str) -> str:
    value = request.headers.get(name.lower())
    if not value:
        raise VerificationError(f"missing {name} header")
    return value


def check_timestamp(value: str, request: SignedRequest, tolerance: float, header: str) -> str:
    """The timestamp as sent, after checking it is Unix seconds within ``tolerance``."""
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise VerificationError(f"{header} is not a Unix timestamp")
    if abs(request.now - int(value)) > tolerance:
        raise VerificationError(
            f"{header} is more than {tolerance:g}s away from the server's clock "
            "(stale or replayed request)"
        )
    return value


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def json_field(body: bytes, key: str) -> str | None:
    """A top-level string (or integer) field of a JSON body, as text, or None."""
    document = json_object(body)
    value = None if document is None else document.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def require_module(module: str, extra: str, field: str) -> None:
    """Refuse the options at load (``field`` names the key path) when a scheme's library is
    not installed, naming the pip extra that brings it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ValidationError(
            f"needs the {module.partition('.')[0]} package: "
            f"pip install 'clawdbot-webhooks[{extra}]'",
            field,
        ) from None


# ------------------------------------------------------------------------------- schemas


class SecretsSchema(Schema):
    """``secret`` and/or ``secrets`` (rotation: any of them is accepted)."""

    class Meta:
        unknown = RAISE

    secret = fields.String(load_default=None, validate=validate.Length(min=1))
    secrets = fields.List(
        fields.String(validate=validate.Length(min=1)),
        load_default=list,
        validate=validate.Length(max=16),
    )

    @validates_schema
    def _one_secret(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("secret") and not data.get("secrets"):
            raise ValidationError("required: set secret or secrets", "secret")

    @post_load
    def _merge(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["secrets"] = secrets_of(data)
        return data


class TimedSchema(SecretsSchema):
    tolerance = fields.Float(
        load_default=DEFAULT_TOLERANCE, validate=validate.Range(min=1, max=86_400 * 7)
    )

"""Built-in incoming authentication schemes.

Each verifier has a marshmallow ``schema`` for its ``verify: {...}`` options (the config loader
validates them at load time and hands ``verify`` the *loaded* options) and a ``verify(request,
options)`` that raises ``VerificationError`` to refuse, or returns the sender's delivery id so
a redelivery is recognised.

Each also has ``sign(body, options, now)``: the headers its provider would send, made with the
first secret, so ``clawdbot-webhooks send-test`` can fire a request that passes the real check;
signing and checking share one computation per scheme.

Rules every scheme here keeps: every secret in ``secrets`` is tried (rotation) and every
comparison is constant-time and never stops at the first match; a timestamp outside
``tolerance`` seconds of ``request.now`` is refused (replay); error messages never contain a
secret or the expected signature.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError, hookimpl
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from clawdbot_webhooks.signing import decode_secret, sign_standard

#: Five minutes either way, what Standard Webhooks, Stripe and Slack all recommend.
DEFAULT_TOLERANCE = 300.0
#: More candidate signatures than this in one header is an attack, not key rotation.
MAX_SIGNATURES = 16
_DIGITS = re.compile(r"[0-9]{1,15}")
_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


# ------------------------------------------------------------------------------- helpers


def _secrets(options: Mapping[str, Any]) -> list[str]:
    """``secret`` first, then ``secrets`` (the loaded options already merged them)."""
    found = [s for s in options.get("secrets") or [] if s]
    secret = options.get("secret")
    if secret and secret not in found:
        found.insert(0, secret)
    return found


def _first_secret(options: Mapping[str, Any]) -> str:
    return _secrets(options)[0]


def any_equal(given: Iterable[bytes], expected: Iterable[bytes]) -> bool:
    """Whether any given value equals any expected one: every pair is compared in constant
    time and the loop never stops early, so timing says nothing about which one matched."""
    candidates = list(given)
    ok = False
    for want in expected:
        for have in candidates:
            ok |= hmac.compare_digest(have, want)
    return ok


@functools.lru_cache(maxsize=256)
def _digest(secret: str) -> bytes:
    """A configured secret's hash, computed once (the configured secrets are few)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def matches_any(given: str, secrets: list[str]) -> bool:
    """A plain secret against every configured one. Both sides are hashed first so the
    comparison takes the same time whatever the lengths."""
    digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    ok = False
    for secret in secrets:  # no early exit: the time says nothing about which one matched
        ok |= hmac.compare_digest(digest, _digest(secret))
    return ok


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _hmac(algorithm: str, key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, _ALGORITHMS[algorithm])


def _header(request: SignedRequest, name: str) -> str:
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


def _json_field(body: bytes, key: str) -> str | None:
    """A top-level string field of a JSON body, or None when there is none."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


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
        data["secrets"] = _secrets(data)
        return data


class TimedSchema(SecretsSchema):
    tolerance = fields.Float(
        load_default=DEFAULT_TOLERANCE, validate=validate.Range(min=1, max=86_400 * 7)
    )


# ----------------------------------------------------------------------------- verifiers


class SharedSecret:
    """The secret itself in a header (``X-Webhook-Secret`` by default)."""

    class schema(SecretsSchema):
        header = fields.String(load_default="X-Webhook-Secret", validate=validate.Length(min=1))

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        header = options.get("header") or "X-Webhook-Secret"
        given = request.headers.get(header.lower())
        if given is None:
            raise VerificationError(f"missing {header} header")
        if not matches_any(given, _secrets(options)):
            raise VerificationError(f"wrong secret in {header} header")
        return None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {options.get("header") or "X-Webhook-Secret": _first_secret(options)}


class Bearer:
    """``Authorization: Bearer <token>``, as Clawdbot's own hooks use."""

    class schema(SecretsSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise VerificationError("missing Authorization: Bearer token")
        if not matches_any(token, _secrets(options)):
            raise VerificationError("wrong bearer token")
        return None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {_first_secret(options)}"}


class GitHub:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; the delivery id is
    ``X-GitHub-Delivery`` (the same on a redelivery)."""

    class schema(SecretsSchema):
        header = fields.String(load_default="X-Hub-Signature-256", validate=validate.Length(min=1))

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        header = options.get("header") or "X-Hub-Signature-256"
        given = _header(request, header).strip()
        scheme, _, digest = given.partition("=")
        if scheme.lower() != "sha256" or not digest:
            raise VerificationError(f"{header} must look like sha256=<hex>")
        expected = (self._digest(s, request.body).encode() for s in _secrets(options))
        if not any_equal([digest.strip().lower().encode("utf-8", "replace")], expected):
            raise VerificationError(f"{header} does not match the body")
        return request.headers.get("x-github-delivery") or None

    @staticmethod
    def _digest(secret: str, body: bytes) -> str:
        return _hmac("sha256", secret.encode(), body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        header = options.get("header") or "X-Hub-Signature-256"
        return {
            header: "sha256=" + self._digest(_first_secret(options), body),
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
        }


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
        msg_id = _header(request, f"{prefix}id").strip()
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(
            _header(request, f"{prefix}timestamp"), request, tolerance, f"{prefix}timestamp"
        )
        given = request.headers[f"{prefix}signature"].split()[:MAX_SIGNATURES]
        expected = []
        for secret in _secrets(options):
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
            "webhook-signature": sign_standard(_first_secret(options), msg_id, now, body),
        }


class Stripe:
    """``Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of ``t.body`` keyed by
    the whole endpoint secret; the delivery id is the event's ``id`` in the body."""

    class schema(TimedSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        stamp: str | None = None
        given: list[bytes] = []
        for item in _header(request, "Stripe-Signature").split(","):
            key, _, value = item.strip().partition("=")
            if key == "t":
                stamp = value
            elif key == "v1" and len(given) < MAX_SIGNATURES:
                given.append(value.strip().lower().encode("utf-8", "replace"))
        if stamp is None or not given:
            raise VerificationError("Stripe-Signature must carry t= and v1=")
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(stamp, request, tolerance, "Stripe-Signature timestamp")
        expected = (self._digest(s, stamp, request.body).encode() for s in _secrets(options))
        if not any_equal(given, expected):
            raise VerificationError("Stripe-Signature does not match the body")
        return _json_field(request.body, "id")

    @staticmethod
    def _digest(secret: str, stamp: str, body: bytes) -> str:
        return _hmac("sha256", secret.encode(), f"{stamp}.".encode() + body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        digest = self._digest(_first_secret(options), str(now), body)
        return {"Stripe-Signature": f"t={now},v1={digest}"}


class Slack:
    """``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:timestamp:body">`` with
    ``X-Slack-Request-Timestamp``; the delivery id is the Events API ``event_id``."""

    class schema(TimedSchema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = _header(request, "X-Slack-Signature").strip()
        tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
        stamp = check_timestamp(
            _header(request, "X-Slack-Request-Timestamp"),
            request,
            tolerance,
            "X-Slack-Request-Timestamp",
        )
        expected = (self._signature(s, stamp, request.body).encode() for s in _secrets(options))
        if not any_equal([given.lower().encode("utf-8", "replace")], expected):
            raise VerificationError("X-Slack-Signature does not match the body")
        return _json_field(request.body, "event_id")

    @staticmethod
    def _signature(secret: str, stamp: str, body: bytes) -> str:
        return "v0=" + _hmac("sha256", secret.encode(), f"v0:{stamp}:".encode() + body).hex()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {
            "X-Slack-Request-Timestamp": str(now),
            "X-Slack-Signature": self._signature(_first_secret(options), str(now), body),
        }


class GenericHMAC:
    """Any "HMAC of the body in a header" scheme: ``header``, ``algorithm`` (sha1, sha256,
    sha512), ``encoding`` (hex, base64), optional ``prefix`` (``sha256=``), optional
    ``timestampHeader`` with ``signedPayload`` saying how it joins the body (default
    ``"{timestamp}.{body}"``), optional ``idHeader`` naming the sender's delivery id."""

    class schema(TimedSchema):
        header = fields.String(required=True, validate=validate.Length(min=1))
        algorithm = fields.String(load_default="sha256", validate=validate.OneOf(_ALGORITHMS))
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
        value = _header(request, header).strip()
        prefix = options.get("prefix") or ""
        if prefix:
            if not value.lower().startswith(prefix.lower()):
                raise VerificationError(f"{header} must start with {prefix!r}")
            value = value[len(prefix) :].strip()
        stamp = ""
        if options.get("timestampHeader"):
            name = options["timestampHeader"]
            tolerance = float(options.get("tolerance", DEFAULT_TOLERANCE))
            stamp = check_timestamp(_header(request, name), request, tolerance, name)
        hexed = options.get("encoding", "hex") == "hex"
        expected = (
            self._digest(options, s, stamp, request.body).encode() for s in _secrets(options)
        )
        given = value.lower() if hexed else value
        if not any_equal([given.encode("utf-8", "replace")], expected):
            raise VerificationError(f"{header} does not match the body")
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
        digest = _hmac(options.get("algorithm") or "sha256", secret.encode(), signed)
        hexed = options.get("encoding", "hex") == "hex"
        return digest.hex() if hexed else base64.b64encode(digest).decode()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        stamp = str(now) if options.get("timestampHeader") else ""
        digest = self._digest(options, _first_secret(options), stamp, body)
        headers = {options["header"]: (options.get("prefix") or "") + digest}
        if stamp:
            headers[options["timestampHeader"]] = stamp
        if options.get("idHeader"):
            headers[options["idHeader"]] = f"test_{uuid.uuid4().hex}"
        return headers


@hookimpl
def register_verifiers(register: Callable[[str, Any], None]) -> None:
    register("shared-secret", SharedSecret())
    register("bearer", Bearer())
    register("github", GitHub())
    register("standard-webhooks", StandardWebhooks())
    register("stripe", Stripe())
    register("slack", Slack())
    register("hmac", GenericHMAC())

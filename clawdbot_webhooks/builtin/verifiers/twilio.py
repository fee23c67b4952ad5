"""Twilio: ``X-Twilio-Signature``, the base64 HMAC-SHA1 of the public URL Twilio called followed
by the form's parameters sorted by name (each name then its value), keyed by the auth token."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import fields

from clawdbot_webhooks.builtin.verifiers.common import (
    SecretsSchema,
    any_equal,
    first_secret,
    hmac_digest,
    required_header,
    secrets_of,
)

_ALGORITHMS = {"HMAC_SHA1": "sha1", "HMAC_SHA256": "sha256"}
#: Twilio posts forms; a plugin keeps the constant rather than import the runtime's.
FORM_TYPE = "application/x-www-form-urlencoded"


def _with_and_without_port(url: str) -> list[str]:
    """The URL as configured, with its default port and without: Twilio signs either (its own
    validator tries both)."""
    parts = urlsplit(url)
    if parts.port is not None:
        host = parts.netloc.rpartition(":")[0]
        return [url, urlunsplit(parts._replace(netloc=host))]
    port = 443 if parts.scheme == "https" else 80
    return [url, urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))]


def _called_url(configured: str, query_string: str) -> str:
    """The URL Twilio signed: the configured one, with the query string the request carries
    (Twilio adds ``bodySHA256`` to it for bodies that are not forms)."""
    if not query_string:
        return configured
    return urlunsplit(urlsplit(configured)._replace(query=query_string))


class Twilio:
    """Options: ``secret`` (the auth token) and ``url``, the public URL configured at Twilio
    (behind a proxy the server cannot know it); the query string is the one the request
    carries. The delivery id is ``I-Twilio-Idempotency-Token``, the same on Twilio's
    retries."""

    class schema(SecretsSchema):
        url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        given = required_header(request, "X-Twilio-Signature").strip()
        algorithm = self._algorithm(request)
        params = self._params(request)
        url = _called_url(options["url"], request.query_string)
        if not params:
            self._check_body_hash(request)
        expected = (
            self._digest(s, candidate, params, algorithm).encode()
            for s in secrets_of(options)
            for candidate in _with_and_without_port(url)
        )
        if not any_equal([given.encode("utf-8", "replace")], expected):
            raise VerificationError("X-Twilio-Signature does not match the URL and parameters")
        return request.headers.get("i-twilio-idempotency-token") or None

    @staticmethod
    def _check_body_hash(request: SignedRequest) -> None:
        """A body that is not a form is signed through the URL: its hex SHA-256 travels in the
        ``bodySHA256`` query parameter, which the signature covers."""
        sent = parse_qs(request.query_string).get("bodySHA256")
        if not request.body and not sent:
            return
        if not sent:
            raise VerificationError("a body that is not a form needs bodySHA256 in the URL")
        digest = hashlib.sha256(request.body).hexdigest().encode()
        if not any_equal([sent[0].strip().lower().encode("utf-8", "replace")], [digest]):
            raise VerificationError("bodySHA256 does not match the body")

    @staticmethod
    def _params(request: SignedRequest) -> list[tuple[str, str]]:
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != FORM_TYPE:
            return []  # Twilio signs the URL alone when it sends no form
        return parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True)

    @staticmethod
    def _algorithm(request: SignedRequest) -> str:
        """HMAC-SHA1 (the auth token's), or what ``X-Twilio-Webhooks-Signature-Settings``
        names for a shared key's signatures (``algorithm=HMAC_SHA256``)."""
        settings = request.headers.get("x-twilio-webhooks-signature-settings") or ""
        for part in settings.split(","):
            name, _, value = part.partition("=")
            if name.strip() == "algorithm" and value.strip():
                algorithm = _ALGORITHMS.get(value.strip().upper())
                if algorithm is None:
                    raise VerificationError(f"unsupported signature algorithm {value.strip()!r}")
                return algorithm
        return "sha1"

    @staticmethod
    def _digest(
        secret: str, url: str, params: list[tuple[str, str]], algorithm: str = "sha1"
    ) -> str:
        # As Twilio's own validator: names sorted, a repeated name's values sorted too.
        signed = url + "".join(f"{k}{v}" for k, v in sorted(set(params)))
        digest = hmac_digest(algorithm, secret.encode(), signed.encode())
        return base64.b64encode(digest).decode()

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {"X-Twilio-Signature": self._digest(first_secret(options), options["url"], params)}

    def sample(self, payload: dict[str, Any], now: int) -> tuple[bytes, str]:
        """``send-test``'s sample as Twilio sends an incoming SMS: a form."""
        fields_ = {
            "MessageSid": "SM" + str(payload.get("id", ""))[-32:].rjust(32, "0"),
            "AccountSid": "AC" + "0" * 32,
            "From": "+15005550006",
            "To": "+15005550001",
            "Body": str(payload.get("message", "")),
            "NumMedia": "0",
        }
        return urlencode(fields_).encode(), FORM_TYPE

"""Google OIDC tokens, as Pub/Sub push subscriptions (Gmail watch, Cloud events) send them:
``Authorization: Bearer <JWT>`` signed by Google, checked with PyJWT against Google's published
keys (or a JWKS file or URL of your choosing), for the configured ``audience`` and, when set,
the service account's ``email``. Templates see a Pub/Sub envelope's ``message.data`` decoded."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from clawdbot_webhooks.builtin.verifiers.common import (
    DEFAULT_TOLERANCE,
    JSON_TYPE,
    bearer_token,
    json_object,
    require_module,
)

#: Where Google publishes the keys its OIDC tokens are signed with.
GOOGLE_JWKS = "https://www.googleapis.com/oauth2/v3/certs"
ISSUERS = ("https://accounts.google.com", "accounts.google.com")
#: How long fetched keys are kept when the answer does not say (Cache-Control max-age).
KEYS_TTL = 3600.0
#: A token naming an unknown key fetches the keys again, at most this often.
REFETCH_AFTER = 60.0
FETCH_TIMEOUT = 10.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _key_set(document: Any) -> dict[str, Any]:
    """A JWKS document's keys by ``kid`` (PyJWT parses them); ``ValueError`` if unusable."""
    import jwt

    try:
        keys = jwt.PyJWKSet.from_dict(document).keys
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, TypeError, AttributeError, KeyError) as exc:
        raise ValueError(f"not a usable JWKS: {exc}") from None
    return {str(k.key_id or i): k for i, k in enumerate(keys)}


def _read_file(path: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} is not JSON") from None
    return _key_set(document)


class _Keys:
    """The keys of one JWKS source: a file read again when it changes, or a URL fetched when
    the keys expire or a token names a key not seen yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.keys: dict[str, Any] = {}
        self.expires = 0.0
        self.fetched = float("-inf")
        self.stamp: tuple[int, int] | None = None
        self.lock = asyncio.Lock()

    async def get(self, kid: str | None) -> dict[str, Any]:
        if not _is_url(self.source):
            try:
                stat = os.stat(self.source)
                if (stat.st_mtime_ns, stat.st_size) != self.stamp:
                    self.keys = _read_file(self.source)
                    self.stamp = (stat.st_mtime_ns, stat.st_size)
            except (OSError, ValueError) as exc:
                # removed or broken since the config loaded: the keys read before stay in use
                if not self.keys:
                    raise VerificationError(f"signing keys unavailable: {exc}") from None
            return self.keys
        now = time.monotonic()
        unknown = kid is not None and kid not in self.keys
        if now < self.expires and not (unknown and now - self.fetched >= REFETCH_AFTER):
            return self.keys
        async with self.lock:  # one fetch for all the requests that found the keys stale
            if self.fetched < now:
                await self._fetch()
        return self.keys

    async def _fetch(self) -> None:
        import aiohttp

        self.fetched = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.source) as response,
            ):
                response.raise_for_status()
                document = await response.json(content_type=None)
                ttl = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
            self.keys = _key_set(document)
            self.expires = self.fetched + (float(ttl.group(1)) if ttl else KEYS_TTL)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if not self.keys:
                raise VerificationError(f"signing keys unavailable: {exc}") from None
            # keys fetched before stay in use, and the next try waits a little
            self.expires = self.fetched + REFETCH_AFTER


class GoogleOIDC:
    """Options: ``audience`` (what the push subscription sets), optional ``email`` (its
    service account), optional ``jwks`` (a file or URL; Google's keys by default). The delivery
    id is the Pub/Sub ``message.messageId``, the same on every redelivery."""

    class schema(Schema):
        class Meta:
            unknown = RAISE

        audience = fields.String(required=True, validate=validate.Length(min=1))
        email = fields.Email(load_default=None)
        jwks = fields.String(load_default=GOOGLE_JWKS, validate=validate.Length(min=1))
        tolerance = fields.Float(
            load_default=DEFAULT_TOLERANCE, validate=validate.Range(min=0, max=3600)
        )

        @validates_schema
        def _jwks(self, data: dict[str, Any], **kwargs: Any) -> None:
            require_module("jwt", "google", "type")
            require_module("cryptography.hazmat", "google", "type")
            source = data.get("jwks") or GOOGLE_JWKS
            if not _is_url(source):
                try:
                    _read_file(source)
                except ValueError as exc:
                    raise ValidationError(str(exc), "jwks") from None

    def __init__(self) -> None:
        self._sources: dict[str, _Keys] = {}

    async def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        import jwt

        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise VerificationError("missing Authorization: Bearer token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:  # not only DecodeError: a ``kid`` that is not a string, say
            raise VerificationError("the bearer token is not a JWT") from None
        source = options.get("jwks") or GOOGLE_JWKS
        keys = await self._sources.setdefault(source, _Keys(source)).get(kid)
        candidates = [keys[kid]] if kid in keys else ([] if kid else list(keys.values()))
        if not candidates:
            raise VerificationError("the token names a signing key that is not published")
        claims = self._claims(token, candidates, options, request.now)
        email = options.get("email")
        if email and (claims.get("email") != email or claims.get("email_verified") is not True):
            raise VerificationError("the token is not for the configured service account")
        message = (json_object(request.body) or {}).get("message")
        message_id = message.get("messageId") if isinstance(message, dict) else None
        return message_id if isinstance(message_id, str) and message_id else None

    @staticmethod
    def _claims(
        token: str, keys: list[Any], options: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        import jwt

        leeway = float(options.get("tolerance", DEFAULT_TOLERANCE))
        failure = "the token's signature does not match the published keys"
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=["RS256"],
                    audience=options["audience"],
                    issuer=ISSUERS,
                    # the times are checked below, against the request's clock
                    options={
                        "require": ["exp", "iat", "iss", "aud"],
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise VerificationError("the token is for another audience") from None
            except jwt.InvalidIssuerError:
                raise VerificationError("the token was not issued by Google") from None
            except jwt.PyJWTError as exc:
                raise VerificationError(f"the token is not valid: {exc}") from None
            try:
                expires, issued = float(claims["exp"]), float(claims["iat"])
            except (TypeError, ValueError):
                raise VerificationError("the token's exp or iat is not a time") from None
            if expires + leeway < now:
                raise VerificationError("the token has expired (stale or replayed request)")
            if issued - leeway > now:
                raise VerificationError("the token was issued in the future")
            return claims
        raise VerificationError(failure)

    def present(self, payload: Any, options: Mapping[str, Any]) -> Any:
        """A Pub/Sub push envelope with ``message.data`` decoded: JSON as its value, other
        UTF-8 as text; the base64 as sent stays in ``message.data_base64``."""
        message = payload.get("message") if isinstance(payload, dict) else None
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, str):
            return payload
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return payload
        try:
            decoded: Any = json.loads(text)
        except (ValueError, RecursionError):
            decoded = text
        assert isinstance(message, dict)
        return {**payload, "message": {**message, "data": decoded, "data_base64": data}}

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        """Only Google holds its private keys: ``send-test --signing-key`` names a PEM file with
        a private key whose public key is in the configured ``jwks`` file."""
        import jwt
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        text = options.get("signingKey")
        if not text:
            raise ValueError("google-oidc tokens are signed with Google's private key: pass one")
        private = load_pem_private_key(text.encode(), password=None)
        public = private.public_key().public_numbers()  # type: ignore[union-attr]
        kid = None
        source = options.get("jwks") or GOOGLE_JWKS
        if not _is_url(source):
            for name, key in _read_file(source).items():
                numbers = getattr(key.key, "public_numbers", None)
                if numbers is not None and numbers() == public:
                    kid = name
        claims: dict[str, Any] = {
            "iss": ISSUERS[0],
            "aud": options["audience"],
            "sub": "clawdbot-webhooks-send-test",
            "iat": now,
            "exp": now + 3600,
        }
        if options.get("email"):
            claims.update(email=options["email"], email_verified=True)
        headers = {"kid": kid} if kid else None
        token = jwt.encode(claims, private, algorithm="RS256", headers=headers)  # type: ignore[arg-type]
        return {"Authorization": f"Bearer {token}"}

    def sample(self, payload: dict[str, Any], now: int) -> tuple[bytes, str]:
        """``send-test``'s sample as a Pub/Sub push: the payload in an envelope."""
        envelope = {
            "message": {
                "data": base64.b64encode(json.dumps(payload).encode()).decode(),
                "messageId": str(uuid.uuid4().int >> 64),
                "publishTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "attributes": {},
            },
            "subscription": "projects/test/subscriptions/clawdbot-webhooks",
        }
        return json.dumps(envelope).encode(), JSON_TYPE

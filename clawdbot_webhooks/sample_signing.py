"""Headers that authenticate a request the way a handler's verifier expects (``send-test``).

The mirror image of ``builtin/verifiers.py``: each scheme signs with the first configured
secret, exactly as its provider would, so a sample request passes the real verification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping
from typing import Any

from .signing import sign_standard


class CannotSign(Exception):
    """The handler uses a verifier this module does not know (a plugin's own scheme)."""


def _hmac(algorithm: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def _secret(options: Mapping[str, Any]) -> str:
    secret = options.get("secret") or next(iter(options.get("secrets") or []), None)
    if not secret:
        raise CannotSign("the handler's verify options have no secret")
    return str(secret)


def sign_headers(verify: Mapping[str, Any] | None, body: bytes, now: int) -> dict[str, str]:
    """Headers for ``body`` sent at ``now`` (Unix seconds) under the loaded ``verify``
    options of a handler (``HandlerSpec.verify``); none when the handler checks nothing."""
    if verify is None:
        return {}
    kind = verify["type"]
    if kind == "shared-secret":
        return {verify.get("header") or "X-Webhook-Secret": _secret(verify)}
    if kind == "bearer":
        return {"Authorization": f"Bearer {_secret(verify)}"}
    key = _secret(verify).encode()
    if kind == "github":
        digest = _hmac("sha256", key, body).hex()
        return {
            verify.get("header") or "X-Hub-Signature-256": f"sha256={digest}",
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
        }
    if kind == "standard-webhooks":
        msg_id = f"msg_{uuid.uuid4().hex}"
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign_standard(_secret(verify), msg_id, now, body),
        }
    if kind == "stripe":
        digest = _hmac("sha256", key, f"{now}.".encode() + body).hex()
        return {"Stripe-Signature": f"t={now},v1={digest}"}
    if kind == "slack":
        digest = _hmac("sha256", key, f"v0:{now}:".encode() + body).hex()
        return {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": f"v0={digest}"}
    if kind == "hmac":
        return _generic(verify, key, body, now)
    raise CannotSign(f"send-test cannot sign for verifier {kind!r}")


def _generic(verify: Mapping[str, Any], key: bytes, body: bytes, now: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    stamp = ""
    if verify.get("timestampHeader"):
        stamp = str(now)
        headers[verify["timestampHeader"]] = stamp
    shape = verify.get("signedPayload") or "{body}"
    before, _, after = shape.partition("{body}")
    signed = (
        before.replace("{timestamp}", stamp).encode()
        + body
        + after.replace("{timestamp}", stamp).encode()
    )
    digest = _hmac(verify.get("algorithm") or "sha256", key, signed)
    encoded = digest.hex() if verify.get("encoding", "hex") == "hex" else base64.b64encode(digest)
    text = encoded if isinstance(encoded, str) else encoded.decode()
    headers[verify["header"]] = (verify.get("prefix") or "") + text
    if verify.get("idHeader"):
        headers[verify["idHeader"]] = f"test_{uuid.uuid4().hex}"
    return headers

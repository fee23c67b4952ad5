"""Standard Webhooks signatures (https://www.standardwebhooks.com), shared by outgoing signing
and the incoming ``standard-webhooks`` verifier so both compute exactly the same thing."""

from __future__ import annotations

import base64
import binascii
import hmac

SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional).

    Padding may be left out, as the reference libraries allow; anything that is not base64
    raises ``ValueError`` (the message never contains the secret).
    """
    text = secret.removeprefix(SECRET_PREFIX).strip()
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a base64 secret (expected whsec_<base64>)") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def sign_standard(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">`` keyed by the decoded secret."""
    return _signature(decode_secret(secret), msg_id, timestamp, body)


def _signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


class StandardSigner:
    """Signs the deliveries of one outgoing subscription; the key is decoded once.

    The secret is read exactly as the reference libraries read it (``whsec_`` prefix
    optional, the rest base64), so any Standard Webhooks receiver, ours included, verifies
    what we send.
    """

    def __init__(self, secret: str) -> None:
        self._key = decode_secret(secret)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one attempt."""
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": _signature(self._key, msg_id, timestamp, body),
        }

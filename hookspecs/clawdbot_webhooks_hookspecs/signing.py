"""Standard Webhooks signatures (https://www.standardwebhooks.com): the runtime signs outgoing
deliveries with them and its ``standard-webhooks`` verifier checks incoming ones, so both
compute exactly the same thing; a plugin's verifier or transport can too. Since 1.4."""

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
    return standard_signature(decode_secret(secret), msg_id, timestamp, body)


def standard_signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The same with a key decoded once (``decode_secret``), for a signer used many times."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()

"""Outgoing Standard Webhooks signatures (https://www.standardwebhooks.com). The computation is
the plugin API's (``clawdbot_webhooks_hookspecs.signing``), which the incoming
``standard-webhooks`` verifier uses too, so both compute exactly the same thing."""

from __future__ import annotations

from clawdbot_webhooks_hookspecs.signing import (
    SECRET_PREFIX,
    decode_secret,
    sign_standard,
    standard_signature,
)

__all__ = ["SECRET_PREFIX", "StandardSigner", "decode_secret", "sign_standard"]


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
            "webhook-signature": standard_signature(self._key, msg_id, timestamp, body),
        }

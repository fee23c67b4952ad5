"""``verify: {type: "none"}``: a public endpoint, said explicitly.

A handler without any authentication is a config error, so an open endpoint is always one the
operator asked for; ``serve`` names such handlers once at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import SignedRequest
from marshmallow import Schema


class Public:
    """Accepts every request; vouches for no sender."""

    class schema(Schema):
        pass

    def verify(self, request: SignedRequest, options: Mapping[str, Any]) -> str | None:
        return None

    def sign(self, body: bytes, options: Mapping[str, Any], now: int) -> dict[str, str]:
        return {}

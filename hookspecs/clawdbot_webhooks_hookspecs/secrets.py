"""Checking a plain shared secret or bearer token the way the runtime does. Since 1.4."""

from __future__ import annotations

import functools
import hashlib
import hmac


def _hash(text: str) -> bytes:
    # BLAKE2s is CPython's own code: no OpenSSL algorithm look-up (and its locks) per call, as
    # ``hashlib.sha256`` makes. The hash only makes both sides the same length.
    return hashlib.blake2s(text.encode("utf-8", "surrogateescape")).digest()


@functools.lru_cache(maxsize=256)
def _digest(secret: str) -> bytes:
    """A configured secret's hash, computed once (the configured secrets are few)."""
    return _hash(secret)


def matches_any(given: str, secrets: list[str]) -> bool:
    """A plain secret against every configured one. Both sides are hashed first so the
    comparison takes the same time whatever the lengths."""
    digest = _hash(given)
    ok = False
    for secret in secrets:  # no early exit: the time says nothing about which one matched
        ok |= hmac.compare_digest(digest, _digest(secret))
    return ok


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None

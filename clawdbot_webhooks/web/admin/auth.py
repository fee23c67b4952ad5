"""Who may use the admin API and the dashboard.

Scripts send ``Authorization: Bearer <admin token>``. The dashboard's login form exchanges the
token for an HttpOnly, SameSite=Strict cookie holding ``<expiry>.<HMAC(token, expiry)>``: the
token itself is never stored in the browser nor put in a URL, a cookie outlives no token
change, and no session table is needed. Changes made with the cookie (POST, DELETE) must also
carry ``X-Requested-With: clawdbot-admin``, a header another site's page cannot send without a
CORS preflight this server never grants.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web
from clawdbot_webhooks_hookspecs import bearer_token

from clawdbot_webhooks.logs import Redactor

COOKIE = "clawdbot_admin"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "clawdbot-admin"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AdminAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._digest = hashlib.sha256(self._token).digest()

    def token_matches(self, given: str) -> bool:
        # Digests of both sides: the comparison takes the same time whatever the lengths.
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._digest)

    def _mac(self, expires: int) -> str:
        return hmac.new(self._token, f"admin-session.{expires}".encode(), "sha256").hexdigest()

    def session_value(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        return f"{expires}.{self._mac(expires)}"

    def session_valid(self, value: str | None) -> bool:
        if not value:
            return False
        stamp, _, mac = value.partition(".")
        if not stamp.isdigit() or int(stamp) < time.time():
            return False
        return hmac.compare_digest(mac.encode(), self._mac(int(stamp)).encode())

    def bearer_ok(self, request: web.Request) -> bool:
        token = bearer_token(request.headers.get("Authorization"))
        return token is not None and self.token_matches(token)

    def cookie_ok(self, request: web.Request) -> bool:
        return self.session_valid(request.cookies.get(COOKIE))

    def api_allowed(self, request: web.Request) -> str | None:
        """None when the request may go on, else why it may not."""
        if self.bearer_ok(request):
            return None
        if self.cookie_ok(request):
            if request.method in _SAFE_METHODS or request.headers.get(CSRF_HEADER) == CSRF_VALUE:
                return None
            return f"changes made with the dashboard cookie need {CSRF_HEADER}: {CSRF_VALUE}"
        if request.headers.get("Authorization"):
            return "wrong admin token"
        return "missing Authorization: Bearer <admin token>"

    def set_cookie(self, response: web.StreamResponse, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            self.session_value(),
            max_age=SESSION_SECONDS,
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )


AUTH = web.AppKey("admin_auth", AdminAuth)
#: Masks configured secrets in what the admin API and the dashboard show (``logs.Redactor``).
REDACTOR = web.AppKey("admin_redactor", Redactor)

"""aiohttp's server, answering what never reaches a route in JSON.

A request aiohttp's parser refuses (a bad request line, an invalid header name or value, a
header line over the limit) is answered by the connection's ``RequestHandler.handle_error``,
before any app or middleware sees it; aiohttp's own answer is plain text quoting the bytes it
choked on, which may be a secret from a header. ``JsonErrorHandler`` answers
``{"ok": false, "error": "malformed request"}`` instead, with aiohttp's status, and never
any byte of the request. ``AppRunner`` is aiohttp's runner whose connections are
``JsonErrorHandler`` ones: every listener ``serve`` and ``testing.serve`` open uses it.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from clawdbot_webhooks.web.dispatch import webhooks_first
from clawdbot_webhooks.web.errors import error
from clawdbot_webhooks.web.keys import WEBHOOK_ROUTE

MALFORMED = "malformed request"


def reason(status: int, exc: BaseException | None) -> str:
    """A short generic reason: never the parser's message, which quotes the request."""
    if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
        return MALFORMED
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


class JsonErrorHandler(web.RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own handling logs the error (through the MalformedRequests filter, which
        # counts and throttles) and refuses when a response has begun; only its body is
        # replaced, and the message, which may quote the request, is never passed on.
        plain = super().handle_error(request, status, exc, None)
        answer = error(plain.status, reason(plain.status, exc), {"Connection": "close"})
        answer.force_close()
        return answer


class _Server(web.Server):
    """aiohttp's server, making ``JsonErrorHandler`` connections; it adds no state."""

    def __call__(self) -> web.RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds its server itself (Application._make_handler); turning that one
        # into the subclass keeps everything aiohttp set on it.
        server.__class__ = _Server
        route = self.app.get(WEBHOOK_ROUTE)
        if route is not None:
            server.request_handler = webhooks_first(self.app, route, server.request_handler)
        return server

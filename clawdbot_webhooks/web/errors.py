"""Errors answered in JSON: every refusal of this server has a status code and a body of
``{"ok": false, "error": "..."}``, aiohttp's own included."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Statuses after which the rest of the request body may still be on its way: the
#: connection is closed rather than kept for a client that may be trickling bytes.
_CLOSE_AFTER = frozenset({408, 413})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response({"ok": False, "error": message}, status=status, headers=headers)
    if status in _CLOSE_AFTER:
        response.force_close()
    return response


def json_errors(handler: Handler) -> Handler:
    """Wraps a route's handler so that aiohttp's own errors (a body over the size limit, say)
    are answered in JSON like ours. A decorator on the routes that need it rather than a
    middleware, which every webhook would pass through."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error(exc.status, exc.reason, headers)

    return wrapped


async def no_route(request: web.Request) -> web.StreamResponse:
    """The last route, taking what no other route did: 405 (with ``Allow``) when the path
    exists for other methods, 404 otherwise, both in JSON."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        return error(405, "Method Not Allowed", {"Allow": ",".join(sorted(allowed))})
    return error(404, "Not Found")


def add_no_route(app: web.Application) -> None:
    """Add ``no_route``; it must come after every other route."""
    app.router.add_route("*", "/{path:.*}", no_route)

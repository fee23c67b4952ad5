"""Webhooks past aiohttp's router.

For every request, ``Application._handle`` asks for the event loop (a system call on Python
3.11), walks the router's index and matches each candidate's pattern. A webhook is known by its
path alone: under the webhook route's prefix, where no other route lies. ``webhooks_first``
gives such a request the match the router would have made and hands it to the route's
handler; everything else, and anything unusual (an escaped character in the path,
``Expect: 100-continue``), goes to the router. Whether the path alone decides is checked once,
when the server is made: where another route, a sub-application or a middleware could take
part, every request goes through the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import MatchedSubAppResource, UrlMappingMatchInfo

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

#: How many hooks' matches are kept at most (hooks removed by a reload stay among them).
MATCHES = 4096


def path_prefix(route: web.AbstractRoute) -> tuple[str, str] | None:
    """``("/webhook/", "hook_id")`` of a route ``/webhook/{hook_id:...}``; None for any other
    shape."""
    resource = route.resource
    if resource is None:
        return None
    prefix, brace, rest = resource.canonical.rpartition("{")
    name = rest[:-1]
    if not brace or not prefix.endswith("/") or prefix == "/" or "{" in prefix:
        return None
    if not name.isidentifier() or rest[-1:] != "}":
        return None
    return prefix, name


def webhooks_first(app: web.Application, route: web.AbstractRoute, routed: Handler) -> Handler:
    """``routed`` (the app's own handler), with the requests that can only be ``route``'s
    taken to it directly; ``routed`` itself where the path alone does not decide."""
    shape = path_prefix(route)
    if shape is None or route.method != hdrs.METH_ANY or app.middlewares:
        return routed
    prefix, name = shape
    for resource in app.router.resources():
        if resource is route.resource:
            continue
        if isinstance(resource, MatchedSubAppResource) or resource.canonical.startswith(prefix):
            return routed
    handler = route.handler
    start = len(prefix)
    # A frozen match holds the route, the value and the app, nothing of a request: one per
    # hook is made once and shared. Kept only for a hook that was there (not a 404), so names
    # made up by a scanner take no place.
    matches: dict[str, UrlMappingMatchInfo] = {}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.path_safe
        value = path[start:]
        if (
            path.startswith(prefix)
            and value
            and "%" not in path
            and "{" not in value
            and "}" not in value
            and not request.headers.get(hdrs.EXPECT)
            and isinstance(request, web.Request)
        ):
            match = matches.get(value)
            if match is not None:
                request._match_info = match
                return await handler(request)
            match = UrlMappingMatchInfo({name: value}, route)
            match.add_app(app)
            match.freeze()
            request._match_info = match
            response = await handler(request)
            if response.status != 404 and len(matches) < MATCHES:
                matches[value] = match
            return response
        return await routed(request)

    return handle

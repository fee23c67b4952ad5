"""Webhooks past the router (``web.dispatch``): the same match as aiohttp's router gives, for
every path the shortcut takes; the router for everything else, and for every request where
the path alone does not decide."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from clawdbot_webhooks.web.dispatch import webhooks_first

ROUTE = "/webhook/{hook_id:[^{}]+}"


async def _webhook(request: web.Request) -> web.Response:
    return web.json_response({"hook": request.match_info["hook_id"], "via": "route"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _app(*extra: str, middleware: bool = False) -> tuple[web.Application, web.AbstractRoute]:
    @web.middleware
    async def nothing(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    app = web.Application(middlewares=[nothing] if middleware else [])
    route = app.router.add_route("*", ROUTE, _webhook)
    app.router.add_get("/healthz", _healthz)
    for path in extra:
        app.router.add_get(path, _healthz)
    app.freeze()
    return app, route


class _Routed:
    """Stands for the app's own handler: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.paths.append(request.path)
        return web.json_response({"via": "router"})


async def _shortcut(app: web.Application, route: web.AbstractRoute, path: str, **kw: Any) -> Any:
    routed = _Routed()
    handle = webhooks_first(app, route, routed)
    request = make_mocked_request("POST", path, app=app, **kw)
    response = await handle(request)
    return request, routed, response


async def test_a_webhook_gets_the_router_s_match_without_the_router() -> None:
    app, route = _app()
    request, routed, response = await _shortcut(app, route, "/webhook/github-prs")
    assert routed.paths == []
    assert request.match_info == {"hook_id": "github-prs"}
    assert request.match_info.route is route and request.app is app
    assert response.status == 200
    assert (await app.router.resolve(request)) == request.match_info


async def test_a_hook_s_match_is_made_once_and_a_missing_hook_s_never_kept() -> None:
    app = web.Application()

    async def known_only(request: web.Request) -> web.Response:
        status = 200 if request.match_info["hook_id"].startswith("known") else 404
        return web.json_response({"hook": request.match_info["hook_id"]}, status=status)

    route = app.router.add_route("*", ROUTE, known_only)
    app.freeze()
    handle = webhooks_first(app, route, _Routed())

    async def match_of(path: str) -> Any:
        request = make_mocked_request("POST", path, app=app)
        await handle(request)
        return request.match_info

    first, second = await match_of("/webhook/known-a"), await match_of("/webhook/known-a")
    assert first is second and second == {"hook_id": "known-a"} and second.route is route
    other = await match_of("/webhook/known-b")
    assert other is not first and other == {"hook_id": "known-b"}
    # A hook that is not there (a 404) gets a match of its own every time: nothing is kept.
    assert await match_of("/webhook/made-up") is not await match_of("/webhook/made-up")


async def test_an_escaped_character_is_matched_as_the_router_decodes_it() -> None:
    app, route = _app()
    request, routed, _ = await _shortcut(app, route, "/webhook/a%20b")
    assert routed.paths == [] and request.match_info == {"hook_id": "a b"}


async def test_anything_unusual_goes_through_the_router() -> None:
    app, route = _app()
    # An escaped slash or percent sign stays escaped in the path the router matches.
    for path in ("/webhook/a%2Fb", "/webhook/", "/webhook", "/healthz", "/webhook/a{b}", "/x"):
        _, routed, _ = await _shortcut(app, route, path)
        assert len(routed.paths) == 1, path
    _, routed, _ = await _shortcut(app, route, "/webhook/gh", headers={"Expect": "100-continue"})
    assert len(routed.paths) == 1


def test_where_the_path_alone_does_not_decide_every_request_takes_the_router() -> None:
    routed = _Routed()
    for app, route in (
        _app("/webhook/special"),  # the router would pick this one for its own path
        _app(middleware=True),  # the middleware must see every request
    ):
        assert webhooks_first(app, route, routed) is routed
    app = web.Application()
    catch_all = app.router.add_route("*", "/{hook_id:[^{}]+}", _webhook)  # basePath "/"
    assert webhooks_first(app, catch_all, routed) is routed
    app = web.Application()
    post_only = app.router.add_post(ROUTE, _webhook)
    assert webhooks_first(app, post_only, routed) is routed


_PATH_TEXT = st.text(
    alphabet=st.sampled_from("ab-_.~/{}%20:@!$&'()*+,;=é"), min_size=0, max_size=12
)


@given(_PATH_TEXT)
async def test_for_any_path_the_shortcut_and_the_router_agree(rest: str) -> None:
    app, route = _app()
    path = "/webhook/" + rest
    try:
        request = make_mocked_request("POST", path, app=app)
        request.rel_url.path_safe  # noqa: B018 (a path yarl refuses is not sent at all)
    except ValueError:
        return
    routed = _Routed()
    await webhooks_first(app, route, routed)(request)
    if routed.paths:  # the router decides, as it always did
        return
    taken = request.match_info
    fresh = make_mocked_request("POST", path, app=app)
    resolved = await app.router.resolve(fresh)
    assert resolved.route is route and dict(resolved) == dict(taken)


async def test_the_server_answers_webhooks_and_everything_else_as_before(start_server) -> None:
    handler = {"id": "xy", "action": "send_message", "template": "hi"}
    srv = await start_server({"handlers": [{**handler, "target": {"channel": "c", "peer": "p"}}]})
    assert (await srv.post("xy"))[0] == 202
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{srv.base}/webhook/x%79", json={}) as resp:
            assert resp.status == 202  # "xy", as the router decodes it
        async with session.post(f"{srv.base}/webhook/a%2Fb", json={}) as resp:
            assert resp.status == 404  # the router's way: hook "a/b"
            assert (await resp.json())["error"] == "no handler for hook 'a/b'"
        async with session.post(f"{srv.base}/webhook/nobody", json={}) as resp:
            assert resp.status == 404
        async with session.get(f"{srv.base}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{srv.base}/webhook/xy") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == ["hi", "hi"]

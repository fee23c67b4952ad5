"""The baseline: a bare aiohttp handler that only parses the JSON body and answers 202, on
the same event loop as the server it is compared with (``BENCH_LOOP``)."""

from __future__ import annotations

import json
import sys

from aiohttp import web
from harness import LOOP

from clawdbot_webhooks.eventloop import loop_factory


async def handle(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.json_response({"ok": True}, status=202)


def main() -> None:
    app = web.Application()
    app.router.add_post("/webhook/{hook}", handle)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=loop_factory(LOOP)(),
    )


if __name__ == "__main__":
    main()

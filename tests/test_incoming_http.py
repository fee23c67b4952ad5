"""The incoming status codes of DESIGN §5 over real HTTP, each with its JSON error body."""

from __future__ import annotations

import pytest

SECRET = "s3cret-value"

BASIC = {
    "incoming": {"secret": SECRET},
    "handlers": [
        {
            "id": "my-hook",
            "action": "send_message",
            "target": {"channel": "local", "peer": "me"},
            "template": "got {{ text }}",
        },
    ],
}
AUTH = {"X-Webhook-Secret": SECRET}


async def test_accepted_with_id_and_session(start_server) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", {"text": "hi"}, headers=AUTH)
    assert status == 202
    assert body["ok"] is True
    assert body["id"].startswith("dlv_")
    assert body["session"].startswith("hook:")
    stored = await srv.runtime.store.get_incoming(body["id"])
    assert stored is not None and stored.session == body["session"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "missing X-Webhook-Secret"), ({"X-Webhook-Secret": "nope"}, "wrong secret")],
)
async def test_missing_or_wrong_secret_is_401(start_server, headers, message) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", {"text": "hi"}, headers=headers)
    assert status == 401
    assert body == {"ok": False, "error": body["error"]} and message in body["error"]
    assert SECRET not in body["error"]
    assert await srv.runtime.store.count_incoming() == 0

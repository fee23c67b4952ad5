"""Requests aiohttp's parser refuses, sent byte for byte on a raw socket to every listener the
server opens: each is answered with aiohttp's status and a JSON body, the connection is
closed, and no byte of the request comes back (aiohttp's own answer quotes the header)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from conftest import free_port

from clawdbot_webhooks.web.admin import ADMIN_LISTENER

SECRET = b"Hdr-S3cret-value-7Qx"
HANDLERS = [
    {"id": "h", "action": "run_agent", "agentId": "a", "template": "x", "verify": {"type": "none"}}
]
ADMIN_TOKEN = "admin-token-malformed-0123456789"

#: (what is wrong, the request): each carries the secret where the parser chokes on it.
MALFORMED = [
    (
        "invalid character in a header value",
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + SECRET + b"\x01\r\n\r\n",
    ),
    (
        "invalid header name",
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nX-Api(Key: " + SECRET + b"\r\n\r\n",
    ),
    (
        "header line without a colon",
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\n" + SECRET + b"\r\n\r\n",
    ),
    ("bad request line", b"GET " + SECRET + b" NOT-HTTP\r\nHost: x\r\n\r\n"),
    ("bad method", b"P@ST" + SECRET + b" /webhook/h HTTP/1.1\r\nHost: x\r\n\r\n"),
    (
        "oversized header",
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nX-Long: " + SECRET * 500 + b"\r\n\r\n",
    ),
]


async def exchange(host: str, port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()  # to EOF: the server closes the connection
    writer.close()
    return answer


def assert_json_refusal(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert status_line.split(" ", 2)[1] == "400", answer
    assert headers["content-type"].split(";")[0] == "application/json"
    assert headers["connection"].lower() == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"ok": False, "error": "malformed request"}
    assert SECRET not in answer
    assert SECRET[:8] not in answer


@pytest.mark.parametrize(("what", "raw"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_request_gets_json_and_none_of_its_bytes(
    start_server, caplog, what: str, raw: bytes
) -> None:
    srv = await start_server(
        {
            "handlers": HANDLERS,
            "incoming": {"eventIngress": {"token": "ingress-token-malformed-1"}},
        }
    )
    with caplog.at_level(logging.WARNING, logger="aiohttp.server"):
        assert_json_refusal(await exchange(srv.server.host, srv.server.port, raw))
        # The ingress route is on the same listener; a malformed request never reaches it.
        aimed = raw.replace(b"/webhook/h", b"/events/ingest")
        assert_json_refusal(await exchange(srv.server.host, srv.server.port, aimed))
        # The listener keeps serving.
        status, body = await srv.post("h", {"n": 1})
        assert status == 202 and body["ok"] is True
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    # Counted by the malformed-request throttle: one line each, none with the bytes. A bad
    # method as a connection's first request is what non-HTTP traffic looks like, logged at
    # debug by aiohttp.
    assert len(refused) == (0 if what == "bad method" else 2)
    assert all(r.getMessage().startswith("refused a malformed HTTP request") for r in refused)
    assert SECRET.decode() not in caplog.text


async def test_the_admin_listener_of_its_own_answers_malformed_requests_in_json(
    start_server,
) -> None:
    srv = await start_server(
        {
            "handlers": HANDLERS,
            "admin": {"enabled": True, "token": ADMIN_TOKEN, "port": free_port()},
        }
    )
    port = srv.server.app[ADMIN_LISTENER].port
    for _, raw in MALFORMED:
        assert_json_refusal(
            await exchange("127.0.0.1", port, raw.replace(b"/webhook/h", b"/admin/api/plugins"))
        )


def test_serve_answers_malformed_requests_in_json(tmp_path: Path, server_process) -> None:
    server = server_process(
        {
            "handlers": HANDLERS,
            "admin": {"enabled": True, "token": ADMIN_TOKEN, "port": free_port()},
        }
    )
    server.start()
    try:
        admin_port = json.loads(server.config.read_text())["webhooks"]["admin"]["port"]
        for port in (server.port, admin_port):
            for _, raw in MALFORMED:
                assert_json_refusal(asyncio.run(exchange("127.0.0.1", port, raw)))
    finally:
        assert server.terminate() == 0
    assert server.log is not None
    assert SECRET.decode() not in server.log.read_text()

"""The incoming status codes (README, "How a webhook flows") over real HTTP, each with its
JSON error body."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import aiohttp
import pytest

SECRET = "s3cret-value"
TARGET = {"channel": "local", "peer": "me"}

BASIC = {
    "incoming": {"secret": SECRET},
    "handlers": [
        {"id": "my-hook", "action": "send_message", "target": TARGET, "template": "got {{ text }}"},
    ],
}
AUTH = {"X-Webhook-Secret": SECRET}


def assert_error(body: object, fragment: str) -> None:
    assert isinstance(body, dict)
    assert body["ok"] is False
    assert set(body) == {"ok", "error"}
    assert fragment in body["error"], body["error"]


async def test_accepted_with_id_and_session(start_server) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", {"text": "hi"}, headers=AUTH)
    assert status == 202
    assert body["ok"] is True
    assert body["id"].startswith("dlv_")
    assert body["session"].startswith("hook:")
    stored = await srv.runtime.store.get_incoming(body["id"])
    assert stored is not None and stored.session == body["session"]
    # The secret is a credential: it is not kept with the stored delivery.
    assert "x-webhook-secret" not in stored.headers


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "missing X-Webhook-Secret"), ({"X-Webhook-Secret": "nope"}, "wrong secret")],
)
async def test_missing_or_wrong_secret_is_401(start_server, headers, message) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", {"text": "hi"}, headers=headers)
    assert status == 401
    assert_error(body, message)
    assert SECRET not in body["error"]
    assert await srv.runtime.store.count_incoming() == 0


async def test_per_handler_secret_and_header_override(start_server) -> None:
    config = {
        "incoming": {"secret": SECRET},
        "handlers": [
            {
                "id": "own",
                "action": "send_message",
                "target": TARGET,
                "template": "x",
                "secret": "other",
                "secretHeader": "X-Own-Token",
            },
        ],
    }
    srv = await start_server(config)
    status, _ = await srv.post("own", {}, headers=AUTH)
    assert status == 401
    status, _ = await srv.post("own", {}, headers={"X-Own-Token": SECRET})
    assert status == 401
    status, _ = await srv.post("own", {}, headers={"X-Own-Token": "other"})
    assert status == 202


async def test_unknown_hook_is_404(start_server) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("nope", {}, headers=AUTH)
    assert status == 404
    assert_error(body, "no handler for hook 'nope'")


async def test_unrouted_path_is_json_404(start_server) -> None:
    srv = await start_server(BASIC)
    async with srv.session.get(f"{srv.base}/elsewhere") as resp:
        assert resp.status == 404
        assert_error(await resp.json(), "Not Found")


async def test_wrong_method_on_another_route_is_json_405(start_server) -> None:
    srv = await start_server(BASIC)
    async with srv.session.post(f"{srv.base}/healthz") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET,HEAD"
        assert_error(await resp.json(), "Method Not Allowed")
    async with srv.session.get(f"{srv.base}/healthz") as resp:
        assert resp.status == 200


async def test_body_over_the_limit_read_by_aiohttp_is_json_413(start_server) -> None:
    """A route that reads its body through aiohttp (the event ingress) still answers JSON."""
    srv = await start_server(
        {
            **BASIC,
            "incoming": {**BASIC["incoming"], "maxBodyBytes": 1000, "eventIngress": {"token": "t"}},
        }
    )
    async with srv.session.post(
        f"{srv.base}/events/ingest", data=b"x" * 5000, headers={"Authorization": "Bearer t"}
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["ok"] is False


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(start_server, method) -> None:
    srv = await start_server(BASIC)
    async with srv.session.request(method, f"{srv.base}/webhook/my-hook", headers=AUTH) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert_error(await resp.json(), f"method {method} not allowed")


@pytest.mark.parametrize(
    ("raw", "ctype", "fragment"),
    [
        (b"{not json", "application/json", "invalid JSON"),
        (b"", "application/json", "empty body"),
        (b'{"a": NaN}', "application/json", "NaN is not valid JSON"),
        (b'{"a": "\xff\xfe"}', "application/json", "not valid utf-8"),
        (b"caf\xe9", "text/plain; charset=utf-8", "not valid utf-8"),
    ],
)
async def test_bad_bodies_are_400(start_server, raw, ctype, fragment) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", raw=raw, headers=AUTH, content_type=ctype)
    assert status == 400
    assert_error(body, fragment)
    assert await srv.runtime.store.count_incoming() == 0


async def test_valid_json_beyond_the_fast_parser_is_accepted(start_server) -> None:
    """Integers beyond 64 bits (beyond -2**63 too) and other charsets are valid JSON:
    accepted, and the action sees them exactly."""
    config = {
        **BASIC,
        "handlers": [{**BASIC["handlers"][0], "template": "{{ n }} {{ s|length }} {{ t }}"}],
    }
    srv = await start_server(config)
    for raw, ctype in [
        (
            b'{"n": 123456789012345678901234567890, "s": "\\ud83d\\ude00", "t": "a"}',
            "application/json",
        ),
        ('{"n": -1, "s": "é", "t": "ü"}'.encode("latin-1"), "application/json; charset=latin-1"),
        (b'{"n": -9223372036854775809, "s": "", "t": "b"}', "application/json"),
    ]:
        status, _ = await srv.post("my-hook", raw=raw, headers=AUTH, content_type=ctype)
        assert status == 202
    await srv.idle()
    from clawdbot_webhooks.builtin.local_gateway import read_log

    texts = [m["text"] for m in read_log(srv.runtime.settings.state_dir)]
    assert texts == [
        "123456789012345678901234567890 1 a",
        "-1 1 ü",
        "-9223372036854775809 0 b",
    ]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"title": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"title": "x\\udfff y"}', "lone UTF-16 surrogate"),
        (b'{"n": 1e999999}', "too large to hold"),
        (b"[-1e400]", "too large to hold"),
        (b'{"n": 123456789012345678901234567890, "s": "\\udc00"}', "lone UTF-16 surrogate"),
    ],
)
async def test_json_nothing_downstream_could_hold_is_refused(
    start_server, raw: bytes, fragment: str
) -> None:
    """Valid JSON that no text or number can hold is refused before it is acknowledged,
    instead of being acked and failing later in every attempt."""
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", raw=raw, headers=AUTH, content_type="application/json")
    assert status == 400
    assert_error(body, fragment)
    assert await srv.runtime.store.count_incoming() == 0


@pytest.mark.parametrize(
    ("name", "raw", "text"),
    [
        ("x-foo", b"\xff\xfe", "\xff\xfe"),
        ("idempotency-key", b"abc\xff", "abc\xff"),  # the delivery id, stored with its row
        ("content-type", b"text/plain; x=\xff", "text/plain; x=\xff"),  # stored with it too
        ("x-utf8", "caf\xe9".encode(), "caf\xe9"),  # UTF-8 stays as it is
    ],
)
async def test_header_bytes_that_are_not_utf8_are_read_as_latin_1(
    start_server, name: str, raw: bytes, text: str
) -> None:
    """A header's bytes that are not UTF-8 are read as ISO-8859-1, as HTTP once defined
    them: the delivery is stored (not a 503 from a store that cannot hold them), runs, and
    its templates see the value; a second delivery with the same odd id is a duplicate."""
    config = {
        **BASIC,
        "handlers": [{**BASIC["handlers"][0], "template": f"{{{{ headers['{name}'] }}}}"}],
    }
    srv = await start_server(config)
    head = b"" if name == "content-type" else b"Content-Type: text/plain\r\n"
    first = await _raw_post(srv, head + name.encode() + b": " + raw + b"\r\n", b"hi")
    assert first[0] == 202, first
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == [text]
    stored = await srv.runtime.store.get_incoming(first[1]["id"])
    assert stored is not None and stored.status == "done" and stored.headers[name] == text
    if name == "idempotency-key":
        again = await _raw_post(srv, head + name.encode() + b": " + raw + b"\r\n", b"hi")
        assert again == (200, {"ok": True, "duplicate": True, "id": first[1]["id"]})


async def test_header_bytes_that_are_not_utf8_are_stored(start_server) -> None:
    """A header value with bytes that are not UTF-8 still gets a 202 and is kept."""
    srv = await start_server(BASIC)
    host, port = srv.base.removeprefix("http://").split(":")
    body = b'{"text": "hi"}'
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /webhook/my-hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Webhook-Secret: {SECRET}\r\n".encode()
        + b"X-Odd: caf\xe9\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    delivery_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"]
    stored = await srv.runtime.store.get_incoming(delivery_id)
    assert stored is not None and stored.headers["x-odd"].startswith("caf")


@pytest.mark.parametrize("ctype", ["application/xml", "image/png", "multipart/form-data"])
async def test_unsupported_content_type_is_415(start_server, ctype) -> None:
    srv = await start_server(BASIC)
    status, body = await srv.post("my-hook", raw=b"<a/>", headers=AUTH, content_type=ctype)
    assert status == 415
    assert_error(body, "unsupported content type")


async def test_form_and_text_bodies_are_accepted(start_server) -> None:
    srv = await start_server(BASIC)
    status, _ = await srv.post(
        "my-hook",
        raw=b"text=from+a+form&x=1",
        headers=AUTH,
        content_type="application/x-www-form-urlencoded",
    )
    assert status == 202
    status, _ = await srv.post(
        "my-hook", raw="plain ✓".encode(), headers=AUTH, content_type="text/plain; charset=utf-8"
    )
    assert status == 202
    await srv.idle()
    from clawdbot_webhooks.builtin.local_gateway import read_log

    texts = [m["text"] for m in read_log(srv.runtime.settings.state_dir)]
    assert texts == ["got from a form", "got "]


async def test_body_over_limit_is_413_by_length_and_while_reading(start_server) -> None:
    config = {**BASIC, "incoming": {"secret": SECRET, "maxBodyBytes": 100}}
    srv = await start_server(config)
    big = json.dumps({"text": "x" * 200}).encode()
    status, body = await srv.post("my-hook", raw=big, headers=AUTH)
    assert status == 413
    assert_error(body, "exceeds the limit of 100 bytes")

    async def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b" " * 50

    async with srv.session.post(
        f"{srv.base}/webhook/my-hook",
        data=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        assert_error(await resp.json(), "exceeds the limit")
    assert await srv.runtime.store.count_incoming() == 0
    status, _ = await srv.post("my-hook", {"text": "small"}, headers=AUTH)
    assert status == 202


def _loopback2_available() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


async def _post_from(address: str, url: str, headers: dict[str, str]) -> tuple[int, dict]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, json={"text": "x"}, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.skipif(not _loopback2_available(), reason="127.0.0.2 is not usable here")
async def test_allowed_ips_and_spoofed_forwarded_for(start_server) -> None:
    config = {**BASIC, "incoming": {"secret": SECRET, "allowedIPs": ["127.0.0.1/32", "::1"]}}
    srv = await start_server(config)
    url = f"{srv.base}/webhook/my-hook"
    status, body = await _post_from("127.0.0.2", url, AUTH)
    assert status == 403
    assert_error(body, "client address 127.0.0.2 is not allowed")
    # An untrusted peer cannot claim an allowed address through X-Forwarded-For.
    status, _ = await _post_from("127.0.0.2", url, {**AUTH, "X-Forwarded-For": "127.0.0.1"})
    assert status == 403
    status, _ = await _post_from("127.0.0.1", url, AUTH)
    assert status == 202


@pytest.mark.skipif(not _loopback2_available(), reason="127.0.0.2 is not usable here")
async def test_trusted_proxy_forwarded_for_is_used(start_server) -> None:
    config = {
        **BASIC,
        "incoming": {
            "secret": SECRET,
            "allowedIPs": ["10.1.0.0/16"],
            "trustedProxies": ["127.0.0.2"],
        },
    }
    srv = await start_server(config)
    url = f"{srv.base}/webhook/my-hook"
    # Through the trusted proxy, the rightmost untrusted hop is the client.
    status, body = await _post_from("127.0.0.2", url, {**AUTH, "X-Forwarded-For": "10.1.2.3"})
    assert status == 202
    stored = await srv.runtime.store.get_incoming(body["id"])
    assert stored is not None and stored.client_ip == "10.1.2.3"
    # A client-written left part does not count: the proxy appended the real address.
    status, body = await _post_from(
        "127.0.0.2", url, {**AUTH, "X-Forwarded-For": "10.1.9.9, 192.0.2.7"}
    )
    assert status == 403
    assert_error(body, "192.0.2.7")
    # The same header from a peer that is not a trusted proxy is ignored.
    status, _ = await _post_from("127.0.0.1", url, {**AUTH, "X-Forwarded-For": "10.1.2.3"})
    assert status == 403


async def test_ipv6_allowlist(start_server) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("IPv6 loopback is not available here")
    config = {**BASIC, "incoming": {"secret": SECRET, "allowedIPs": ["::1/128"]}}
    srv = await start_server(config, host="::1")
    url = f"http://[::1]:{srv.server.port}/webhook/my-hook"
    async with srv.session.post(url, json={"text": "v6"}, headers=AUTH) as resp:
        assert resp.status == 202


async def test_health_and_readiness(start_server) -> None:
    srv = await start_server(BASIC)
    async with srv.session.get(f"{srv.base}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["ok"] is True
    async with srv.session.get(f"{srv.base}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["checks"]["store"] == "ok"


async def test_store_failure_is_503_and_nothing_half_accepted(start_server) -> None:
    srv = await start_server(BASIC)
    await srv.runtime.store.close()  # the database is gone
    status, body = await srv.post("my-hook", {"text": "x"}, headers=AUTH)
    assert status == 503
    assert_error(body, "nothing was accepted")


async def test_sync_mode_answers_200_with_result(start_server) -> None:
    config = {
        "handlers": [
            {
                "id": "ask",
                "action": "run_agent",
                "agentId": "main",
                "mode": "sync",
                "template": "ping {{ n }}",
            },
        ],
    }
    srv = await start_server(config)
    status, body = await srv.post("ask", {"n": 1})
    assert status == 200
    assert body["result"]["text"] == "[main #1] ping 1"
    assert body["id"].startswith("dlv_")
    await asyncio.sleep(0)


async def _raw_post(srv, head: bytes, body: bytes) -> tuple[int, dict]:
    """A request written byte for byte (header bytes aiohttp's client would not send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.server.port)
    writer.write(
        b"POST /webhook/my-hook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"X-Webhook-Secret: {SECRET}\r\nContent-Length: {len(body)}\r\n".encode()
        + head
        + b"\r\n"
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(
    ("head", "body", "fragment"),
    [
        # UTF-7 decodes to half of a UTF-16 pair, which no text can hold
        (b"Content-Type: text/plain; charset=utf-7\r\n", b"+2AA-", "lone UTF-16 surrogate"),
        (b"Content-Type: application/x-www-form-urlencoded; charset=utf-7\r\n", b"a=+2AA-", "lone"),
        # percent-escapes that are not UTF-8
        (b"Content-Type: application/x-www-form-urlencoded\r\n", b"name=%FF", "not valid utf-8"),
        # a body that does not decode as its Content-Encoding says
        (b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", b"not gzip", "could"),
    ],
)
async def test_text_that_cannot_be_stored_is_refused_at_once(
    start_server, head: bytes, body: bytes, fragment: str
) -> None:
    """A body that could be neither stored, rendered nor sent is a 400 with a JSON body while
    the sender waits: not a 202 followed by a delivery that fails for ever, not a 500."""
    srv = await start_server(BASIC)
    status, answer = await _raw_post(srv, head, body)
    assert status == 400, answer
    assert_error(answer, fragment)
    assert await srv.runtime.store.count_incoming() == 0
    # the store is as well as it was: the next delivery is taken
    assert (await srv.post("my-hook", {"text": "next"}, headers=AUTH))[0] == 202


async def test_a_body_that_does_not_decode_is_one_warning_not_a_traceback(
    start_server, caplog
) -> None:
    srv = await start_server(BASIC)
    head = b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
    with caplog.at_level(logging.WARNING):
        assert (await _raw_post(srv, head, b"not gzip"))[0] == 400
        await asyncio.sleep(0.1)  # aiohttp reads what is left of the body after the answer
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelname for r in server] == ["WARNING"], [r.getMessage() for r in server]
    assert "content-encoding" in server[0].getMessage().lower()
    assert server[0].exc_info is None


@pytest.mark.parametrize(
    ("content_type", "raw", "text"),
    [
        ("text/plain; charset=utf-8; format=flowed", b"plain", "plain"),
        ("text/plain; Charset=ISO-8859-1", b"h\xe9", "h\xe9"),
        ('text/plain; charset="latin-1" ; x=y', b"h\xe9", "h\xe9"),
        ("application/json; charset=UTF-8; boundary=x", b'{"text": "j"}', "j"),
        ("application/x-www-form-urlencoded; charset=iso-8859-1", b"text=Ren%E9", "Ren\xe9"),
        ("application/x-www-form-urlencoded", b"text=Ren%C3%A9", "Ren\xe9"),
    ],
)
async def test_the_charset_is_read_wherever_it_stands_among_the_parameters(
    start_server, content_type: str, raw: bytes, text: str
) -> None:
    config = {**BASIC, "handlers": [{**BASIC["handlers"][0], "template": "{{ text or event }}"}]}
    srv = await start_server(config)
    status, body = await srv.post("my-hook", raw=raw, headers=AUTH, content_type=content_type)
    assert status == 202, body
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == [text]


async def test_a_repeated_query_key_keeps_all_its_values(start_server) -> None:
    config = {**BASIC, "handlers": [{**BASIC["handlers"][0], "template": "{{ query.tag }}"}]}
    srv = await start_server(config)
    url = f"{srv.base}/webhook/my-hook?tag=a&tag=b&one=1"
    async with srv.session.post(url, json={}, headers=AUTH) as response:
        assert response.status == 202
        delivery = (await response.json())["id"]
    await srv.idle()
    record = await srv.runtime.store.get_incoming(delivery)
    assert record is not None and record.query == {"tag": ["a", "b"], "one": "1"}
    assert [m["text"] for m in srv.messages()] == ["['a', 'b']"]


async def test_intake_switched_off_takes_no_webhook_but_serves_the_rest(start_server) -> None:
    srv = await start_server({**BASIC, "incoming": {**BASIC["incoming"], "enabled": False}})
    status, body = await srv.post("my-hook", {"text": "hi"}, headers=AUTH)
    assert status == 404 and body["ok"] is False
    assert await srv.runtime.store.count_incoming() == 0
    async with srv.session.get(f"{srv.base}/healthz") as response:
        assert response.status == 200


async def test_a_nul_in_the_payload_is_taken_and_recorded_on_either_backend(start_server) -> None:
    """A NUL is valid in JSON text; PostgreSQL's text columns refuse it. The session key and
    the text kept with the outcome are stored with it escaped: the delivery is accepted and
    done once, as on SQLite, not answered 503 or run again at every lease."""
    hook = {
        **BASIC["handlers"][0],
        "template": "{{ text }}",
        "sessionMode": "persistent",
        "sessionKey": "{{ user }}",
    }
    srv = await start_server({**BASIC, "handlers": [hook]})
    status, body = await srv.post("my-hook", {"text": "a\u0000b", "user": "u\u0000v"}, headers=AUTH)
    assert status == 202, body
    assert body["session"] == "u\\x00v"
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == ["a\x00b"]  # the gateway gets the text
    record = await srv.runtime.store.get_incoming(body["id"])
    assert record is not None and record.status == "done" and record.attempts == 1

"""Hostile input against a real server: every case ends in its documented status with a JSON
error body ``{"ok": false, "error": ...}``, the server keeps serving afterwards, and no secret
ever shows up in an error body or a log line (logs are captured at DEBUG).

Generated cases (hypothesis) run in a worker thread with a blocking HTTP client, so the server
keeps running on the test's event loop while hypothesis drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import re
import select
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawdbot_webhooks.config import ConfigError, build_settings
from clawdbot_webhooks.plugins import PluginSelection, load_plugins
from clawdbot_webhooks.web.requests import _beyond_64_bits, _brackets, _json, _shape

SECRET = "S3CR3T-hostile-Zq9-value"
GH_SECRET = "GH-S3CR3T-hostile-Kp2"
AUTH = {"X-Webhook-Secret": SECRET}
CONFIG: dict[str, Any] = {
    "incoming": {
        "secret": SECRET,
        "maxBodyBytes": 65_536,
        "readTimeout": 0.5,
        "authFailures": None,  # generated cases send many wrong secrets on purpose
    },
    "handlers": [
        {"id": "h", "action": "run_agent", "agentId": "a", "template": "got {{ text }}"},
        {
            "id": "gh",
            "action": "send_message",
            "target": {"channel": "local", "peer": "me"},
            "template": "{{ event.action }}",
            "verify": {"type": "github", "secret": GH_SECRET},
        },
    ],
}
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET, GH_SECRET):
        assert secret not in logged


# ---------------------------------------------------------------------------- helpers


def request(
    port: int,
    path: str,
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    """One blocking request (from a worker thread), on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, pause_after: float = 0.0, rest: bytes = b"") -> tuple[int, bytes]:
    """Bytes straight onto a socket, for what HTTP client libraries refuse to send."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if pause_after:
            time.sleep(pause_after)
            if rest:
                # the server may have closed already: that is what we test
                with contextlib.suppress(OSError):
                    sock.sendall(rest)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()


def assert_error(status: int, body: bytes, expected: int | set[int]) -> dict[str, Any]:
    wanted = {expected} if isinstance(expected, int) else expected
    assert status in wanted, (status, body[:300])
    document = json.loads(body)
    assert set(document) == {"ok", "error"} and document["ok"] is False
    assert isinstance(document["error"], str) and document["error"]
    for secret in (SECRET, GH_SECRET):
        assert secret.encode() not in body
    return document


async def still_serving(srv: Any) -> None:
    status, body = await srv.post("h", {"text": "still here"}, headers=AUTH)
    assert status == 202, body


# ------------------------------------------------------------------ generated bodies


async def test_arbitrary_bytes_as_json(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port

    @EXAMPLES
    @given(body=st.binary(min_size=1, max_size=2000))
    def case(body: bytes) -> None:
        headers = {**AUTH, "Content-Type": "application/json"}
        status, _, answer = request(port, "/webhook/h", body, headers)
        try:
            json.loads(body.decode("utf-8"))
            valid = body.strip() != b""
        except (ValueError, RecursionError):
            valid = False
        if status == 202:
            assert valid and json.loads(answer)["ok"] is True
        else:
            assert not valid or b"nested" in answer
            assert_error(status, answer, 400)

    await asyncio.to_thread(case)
    await still_serving(srv)


async def test_invalid_utf8_and_bad_charsets(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port

    @EXAMPLES
    @given(
        prefix=st.sampled_from([b'{"text": "', b"", b'["']),
        junk=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
        ctype=st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded"]
        ),
    )
    def case(prefix: bytes, junk: bytes, ctype: str) -> None:
        body = prefix + junk + b'"}'
        status, _, answer = request(port, "/webhook/h", body, {**AUTH, "Content-Type": ctype})
        assert_error(status, answer, 400)

    await asyncio.to_thread(case)
    for charset in ("rot13", "base64", "no-such-codec"):
        status, _, answer = await asyncio.to_thread(
            request,
            port,
            "/webhook/h",
            b'{"a": 1}',
            {**AUTH, "Content-Type": f"application/json; charset={charset}"},
        )
        assert_error(status, answer, 400)
    await still_serving(srv)


async def test_strict_json(start_server) -> None:
    srv = await start_server(CONFIG)
    for body in (b"NaN", b'{"a": Infinity}', b"{'single': 1}", b'{"a": 1,}', b"   ", b"\x00"):
        async with srv.session.post(
            f"{srv.base}/webhook/h", data=body, headers={**AUTH, "Content-Type": "application/json"}
        ) as resp:
            assert_error(resp.status, await resp.read(), 400)
    await still_serving(srv)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


async def test_arbitrary_json_documents_are_accepted_and_rendered(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port
    accepted: list[str] = []

    @settings(max_examples=25, deadline=None, database=None)
    @given(document=json_values)
    def case(document: Any) -> None:
        body = json.dumps(document).encode()
        status, _, answer = request(
            port, "/webhook/h", body, {**AUTH, "Content-Type": "application/json"}
        )
        assert status == 202, answer
        accepted.append(json.loads(answer)["id"])

    await asyncio.to_thread(case)
    await srv.idle(timeout=30)
    for delivery_id in accepted:
        record = await srv.runtime.store.get_incoming(delivery_id)
        assert record is not None and record.status == "done", record


# ---------------------------------------------------------------------- sizes and depth


async def test_deep_nesting_is_400_not_a_crash(start_server) -> None:
    srv = await start_server(CONFIG)
    for depth in (65, 1_000, 10_000):
        for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
            status, document = await srv.post("h", raw=body, headers=AUTH)
            assert_error(status, json.dumps(document).encode(), 400)
            assert "nested" in document["error"]
    # as deep as the limit allows is fine
    status, _ = await srv.post("h", raw=b"[" * 64 + b"]" * 64, headers=AUTH)
    assert status == 202
    # a deep JSON `payload` field of a form stays text instead of failing
    form = "payload=" + quote("[" * 5000 + "]" * 5000)
    status, _ = await srv.post(
        "h", raw=form.encode(), headers=AUTH, content_type="application/x-www-form-urlencoded"
    )
    assert status == 202
    await still_serving(srv)


async def test_huge_bodies_are_413(start_server) -> None:
    srv = await start_server(CONFIG)
    big = b'{"text": "' + b"x" * 70_000 + b'"}'
    status, document = await srv.post("h", raw=big, headers=AUTH)
    assert_error(status, json.dumps(document).encode(), 413)

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 8192

    async with srv.session.post(
        f"{srv.base}/webhook/h", data=chunks(), headers={**AUTH, "Content-Type": "text/plain"}
    ) as resp:
        assert_error(resp.status, await resp.read(), 413)
    declared = (
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Secret: " + SECRET.encode() + b"\r\nContent-Length: 999999999\r\n\r\n{"
    )
    status, answer = await asyncio.to_thread(raw, srv.server.port, declared)
    assert_error(status, answer, 413)
    await still_serving(srv)


# ----------------------------------------------------------------------- content types


async def test_wrong_and_missing_content_types(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port

    @EXAMPLES
    @given(
        ctype=st.sampled_from(
            [
                "application/xml",
                "image/png",
                "multipart/form-data; boundary=x",
                "application/octet-stream",
                "application/jsonx",
                "json",
                "*/*",
            ]
        )
        | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
    )
    def case(ctype: str) -> None:
        status, _, answer = request(
            port, "/webhook/h", b'{"text": "x"}', {**AUTH, "Content-Type": ctype}
        )
        mime = ctype.partition(";")[0].strip().lower()
        form = "application/x-www-form-urlencoded"
        if mime in ("application/json", form) or mime.endswith("+json") or mime.startswith("text/"):
            assert status == 202
        else:
            assert_error(status, answer, 415)

    await asyncio.to_thread(case)
    status, _, answer = await asyncio.to_thread(request, port, "/webhook/h", b"{}", dict(AUTH))
    assert_error(status, answer, 415)  # http.client sends no Content-Type of its own
    await still_serving(srv)


# ------------------------------------------------------------------ headers and hook ids


async def test_header_values_never_authenticate_or_leak(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port

    @EXAMPLES
    @given(
        value=st.text(
            alphabet=st.characters(
                min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"
            ),
            max_size=200,
        )
    )
    def case(value: str) -> None:
        guess = SECRET[: len(SECRET) // 2] + value  # close to the secret, never equal
        headers = {"X-Webhook-Secret": guess, "Content-Type": "application/json"}
        try:
            status, _, answer = request(port, "/webhook/h", b"{}", headers)
        except ValueError:
            return  # http.client refuses to send it: nothing reached the server
        assert_error(status, answer, {400, 401})

    await asyncio.to_thread(case)
    await still_serving(srv)


async def test_header_injection_attempts(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port
    head = b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    attempts = [
        # a bare LF or CR inside a value, a NUL, an obsolete line folding, a header with no
        # name: refused by the HTTP parser (400) before any handler runs
        head + b"X-Webhook-Secret: " + SECRET.encode() + b"\rX-Injected: 1\r\n",
        head + b"X-Webhook-Secret: a\x00b\r\n",
        head + b"X-Webhook-Secret: " + SECRET.encode() + b"\r\n folded: yes\r\n",
        head + b": nameless\r\n",
        head + b"Content-Length: 2\r\nContent-Length: 3\r\n",
        head + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    ]
    for attempt in attempts:
        status, _ = await asyncio.to_thread(
            raw, port, attempt + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        assert status == 400
    # a CRLF smuggled into a value the server might echo (the hook id) stays in the JSON body
    status, headers, answer = await asyncio.to_thread(
        request, port, "/webhook/" + quote("x\r\nSet-Cookie: a=b"), b"{}", dict(AUTH)
    )
    assert_error(status, answer, 404)
    assert "Set-Cookie" not in headers
    await still_serving(srv)


async def test_odd_hook_ids_and_path_traversal(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port
    fixed = [
        "/webhook/../webhook/nope",
        "/webhook/..%2F..%2Fetc%2Fpasswd",
        "/webhook/%2e%2e/%2e%2e/etc/passwd",
        "/webhook/h%00",
        "/webhook/h/../../etc",
        "/webhook/%E2%80%AEh",
        "/webhook/" + "a" * 4000,
        "/webhook/%ff%fe",
        "/webhook/{h}",
    ]
    for path in fixed:
        status, _, answer = await asyncio.to_thread(
            request, port, path, b"{}", {**AUTH, "Content-Type": "application/json"}
        )
        document = assert_error(status, answer, {404})
        assert len(document["error"]) < 300  # an id is never echoed at length

    @EXAMPLES
    @given(hook=st.text(min_size=1, max_size=100))
    def case(hook: str) -> None:
        path = "/webhook/" + quote(hook, safe="")
        status, _, answer = request(port, path, b"{}", {**AUTH, "Content-Type": "application/json"})
        if hook in ("h", "gh"):
            assert status in (202, 401)
        else:
            assert_error(status, answer, 404)

    await asyncio.to_thread(case)
    status, _, answer = await asyncio.to_thread(request, port, "/webhook/h", b"", {}, "GET")
    assert_error(status, answer, 405)
    await still_serving(srv)


# ------------------------------------------------------------------------- slow bodies


async def test_slow_body_gets_408(start_server) -> None:
    srv = await start_server(CONFIG)
    port = srv.server.port
    head = (
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Secret: " + SECRET.encode() + b"\r\nContent-Length: 100\r\n\r\n"
    )
    # 10 of 100 bytes, then silence
    status, answer = await asyncio.to_thread(raw, port, head + b'{"text": "', 0.1)
    assert_error(status, answer, 408)

    def trickle() -> tuple[int, bytes]:
        # a byte every 0.05 s: each gap is short, the whole body is not
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            for _ in range(100):
                if select.select([sock], [], [], 0.05)[0]:
                    break  # the server has answered
                sock.sendall(b" ")
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            answer = resp.read()
            assert resp.will_close or resp.getheader("Connection", "").lower() == "close"
            return resp.status, answer

    status, answer = await asyncio.to_thread(trickle)
    assert_error(status, answer, 408)
    await still_serving(srv)


# ------------------------------------------------------------- templates and secrets


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self._TemplateReference__context }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ event|attr('__class__') }}",
    "{{ request['__class__'] }}",
    "{{ (1).__class__.mro() }}",
    "{{ text.__init__.func_globals }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_are_refused_at_load(tmp_path: Path, template: str) -> None:
    raw_config = {
        "stateDir": str(tmp_path),
        "handlers": [
            {"id": "x", "action": "run_agent", "agentId": "a", "template": template},
        ],
    }
    with pytest.raises(ConfigError) as info:
        build_settings(raw_config, load_plugins(PluginSelection.from_config()), None)
    assert info.value.errors[0].startswith("webhooks.handlers[0].template: template refused")


async def test_payload_that_looks_like_a_template_is_rendered_literally(start_server) -> None:
    srv = await start_server(CONFIG)
    texts = [
        "{{ 7 * 7 }}",
        "{% for x in range(10**9) %}x{% endfor %}",
        "{{ ''.__class__.__mro__ }}",
        "{# comment #}{{ secret }}",
        "${WEBHOOK_SECRET} $$ {{ headers }}",
    ]
    ids = []
    for text in texts:
        status, body = await srv.post("h", {"text": text}, headers=AUTH)
        assert status == 202
        ids.append(body["id"])
    await srv.idle()
    for delivery_id, text in zip(ids, texts, strict=True):
        record = await srv.runtime.store.get_incoming(delivery_id)
        assert record is not None and record.status == "done"
        assert record.result["text"].endswith(f"got {text}")
    await still_serving(srv)


async def test_auth_failures_and_signatures_never_leak(start_server) -> None:
    srv = await start_server(
        {**CONFIG, "incoming": {**CONFIG["incoming"], "authFailures": {"max": 5, "window": 60}}}
    )
    # the stored headers of an accepted delivery never include the shared secret
    status, accepted = await srv.post("h", {"text": "x"}, headers=AUTH)
    assert status == 202
    record = await srv.runtime.store.get_incoming(accepted["id"])
    assert record is not None and SECRET not in json.dumps(record.headers)
    body = json.dumps({"action": "opened"}).encode()
    good = hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    for signature in ("sha256=" + good[:-1] + "0", "sha1=" + good, GH_SECRET, "", "sha256="):
        headers = {"X-Hub-Signature-256": signature}
        status, document = await srv.post("gh", raw=body, headers=headers)
        assert_error(status, json.dumps(document).encode(), 401)
        assert good not in document["error"]
    status, document = await srv.post(
        "gh", raw=body, headers={"X-Hub-Signature-256": "sha256=" + good}
    )
    assert_error(status, json.dumps(document).encode(), 429)  # 5 failures: throttled
    assert await srv.runtime.store.count_incoming() == 1  # only the accepted one above


def _nesting(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_nesting, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_nesting, value), default=0)
    return 0


_TRICKY = st.text(alphabet=st.sampled_from('[]{}"\\/a\u00e9\u5b57\n0'), max_size=12)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY, inner, max_size=4),
    max_leaves=30,
)


@given(
    value=_JSON_VALUES,
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 1]),
    limit=st.integers(min_value=1, max_value=6),
)
def test_the_depth_guard_refuses_exactly_the_values_nested_deeper_than_the_limit(
    value: Any, ascii_only: bool, indent: int | None, limit: int
) -> None:
    """Brackets, quotes and backslashes inside strings do not count: a text is refused when
    the value it holds nests deeper than the limit, and only then, however it is written."""
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    for written in (text, text.encode()):
        if _nesting(value) > limit:
            with pytest.raises(ValueError, match=f"nested deeper than {limit} levels"):
                _json(written, limit)
        else:
            assert _json(written, limit) == value


@given(text=st.text(alphabet=st.sampled_from('0123456789x9-\u0663 "é[{]}\u5b57'), max_size=80))
def test_long_runs_of_digits_and_the_opening_brackets_are_found_as_text_finds_them(
    text: str,
) -> None:
    """The look for integers orjson cannot hold (sent to the exact parser) misses none: 20
    digits in a row, or 19 after a minus. The bound on the depth counts every opening
    bracket, from the text or its UTF-8 alike."""
    long_digits = re.search("[0-9]{20}|-[0-9]{19}", text) is not None
    brackets = text.count("[") + text.count("{")
    for written in (text, text.encode()):
        shape = _shape(written)
        assert _beyond_64_bits(shape) is long_digits
        assert _brackets(shape) == brackets


_INT64_EDGES = [-(2**63) - 1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(10**19) + 1]


@given(
    n=st.integers(min_value=-(2**80), max_value=2**80) | st.sampled_from(_INT64_EDGES),
    spaced=st.booleans(),
)
def test_every_integer_arrives_exactly_as_sent(n: int, spaced: bool) -> None:
    """An integer of any size, negative or not, is the same integer after parsing: none
    becomes a float that has lost its last digits."""
    text = json.dumps({"n": n, "also": [n]}, separators=(", ", ": ") if spaced else (",", ":"))
    for written in (text, text.encode()):
        parsed = _json(written, 64)
        assert parsed == {"n": n, "also": [n]}
        assert type(parsed["n"]) is int

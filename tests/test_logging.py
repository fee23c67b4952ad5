"""Structured logs: a real ``serve`` process at DEBUG with JSON lines, driven through accepted,
rejected, forwarded, outgoing-signed and dead-lettered deliveries, leaks no secret; plus the
redaction filter and the JSON formatter on their own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import markupsafe

from clawdbot_webhooks.logs import JsonFormatter, Redactor

INCOMING = "incoming-shared-secret-1"
GITHUB = "github-hmac-secret-2"
FORWARD = "forward-bearer-token-3"
SIGNING_KEY = base64.b64encode(b"outgoing-signing-key-4").decode()
SIGNED = "whsec_" + SIGNING_KEY
DEAD_SUB_KEY = base64.b64encode(b"dead-subscription-key-5").decode()
DEAD_SUB = "whsec_" + DEAD_SUB_KEY
ADMIN = "admin-token-abcdefghijkl-6"
SECRETS = [INCOMING, GITHUB, FORWARD, SIGNED, SIGNING_KEY, DEAD_SUB, DEAD_SUB_KEY, ADMIN]
FAST = {"maxAttempts": 2, "initialDelay": 0.05, "maxDelay": 0.1, "jitter": False}

LEAKY = """
import logging, os

log = logging.getLogger("leaky")

def handle(ctx):
    # A careless plugin: logs a secret and fails with it in the message.
    log.debug("calling upstream with key %s", os.environ["GH_SECRET"])
    raise RuntimeError("upstream refused key " + os.environ["GH_SECRET"])
"""


async def test_no_secret_in_any_log_line(server_process, make_sink, tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text(textwrap.dedent(LEAKY))
    ok = await make_sink()
    down = await make_sink(default=500)
    proc = server_process(
        {
            "logging": {"format": "json", "level": "debug"},
            "incoming": {"secret": INCOMING},
            "admin": {"enabled": True, "token": "${ADMIN_TOKEN}"},
            "handlers": [
                {"id": "chat", "action": "run_agent", "agentId": "a", "template": "hi {{n}}"},
                {
                    "id": "gh",
                    "action": "run_agent",
                    "agentId": "a",
                    "template": "pr {{n}}",
                    "verify": {"type": "github", "secret": "${GH_SECRET}"},
                },
                {
                    "id": "fwd",
                    "action": "forward",
                    "url": ok.url,
                    "headers": {"Authorization": f"Bearer {FORWARD}"},
                },
                {"id": "leaky", "action": "custom", "function": "leaky:handle", "retry": FAST},
            ],
            "outgoing": [
                {"id": "signed", "url": ok.url, "events": ["message_received"], "secret": SIGNED},
                {
                    "id": "dead",
                    "url": down.url,
                    "events": ["message_received"],
                    "secret": DEAD_SUB,
                    "retry": FAST,
                },
            ],
        },
        env={"GH_SECRET": GITHUB, "ADMIN_TOKEN": ADMIN},
    )
    await asyncio.to_thread(proc.start)
    hook = f"{proc.base}/webhook"
    shared = {"X-Webhook-Secret": INCOMING, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: bytes, headers: dict[str, str]) -> int:
            async with http.post(f"{hook}/{path}", data=body, headers=headers) as resp:
                return resp.status

        assert await post("chat", b'{"n": 1}', shared) == 202
        assert await post("chat", b'{"n": 2}', {**shared, "X-Webhook-Secret": "wrong"}) == 401
        assert await post("chat", b'{"n": 3}', {"Content-Type": "application/json"}) == 401
        body = b'{"n": 4}'
        digest = hmac.new(GITHUB.encode(), body, hashlib.sha256).hexdigest()
        gh = {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
        assert await post("gh", body, gh) == 202
        assert await post("gh", b'{"n": 5}', gh) == 401  # signature of another body
        assert await post("fwd", b'{"n": 6}', shared) == 202
        assert await post("leaky", b'{"n": 7}', shared) == 202
        async with http.get(
            f"{proc.base}/admin/api/handlers", headers={"Authorization": "Bearer x"}
        ) as r:
            assert r.status == 401

        admin = {"Authorization": f"Bearer {ADMIN}"}
        deadline = time.monotonic() + 20
        while True:  # two outgoing dead letters (chat, gh events) and the leaky delivery
            async with http.get(f"{proc.base}/admin/api/dead-letters", headers=admin) as r:
                letters = (await r.json())["items"]
            if len(letters) >= 3 and len(ok.received) >= 3:
                break
            assert time.monotonic() < deadline, f"dead letters: {letters}"
            await asyncio.sleep(0.1)
    # The stored error quotes the secret; the admin API shows it masked.
    leaky = [d for d in letters if d["target"] == "leaky"]
    assert leaky and leaky[0]["error"] == "RuntimeError: upstream refused key ***"
    assert not any(secret in json.dumps(letters) for secret in SECRETS)
    forwarded = [r for r in ok.received if r["headers"].get("Authorization")]
    assert forwarded and forwarded[0]["headers"]["Authorization"] == f"Bearer {FORWARD}"
    assert any("webhook-signature" in r["headers"] for r in ok.received)
    assert await asyncio.to_thread(proc.terminate) == 0

    assert proc.log is not None
    text = proc.log.read_text()
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into the log: {secret[:6]}..."
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    levels = {line["level"] for line in lines}
    assert {"debug", "info", "error"} <= levels
    assert any(line.get("hook") == "leaky" and "dead-lettered" in line["message"] for line in lines)
    assert any(line.get("subscription") == "dead" and line.get("delivery") for line in lines)
    assert any(line.get("subscription") == "signed" and line["level"] == "debug" for line in lines)
    leaked = [line["message"] for line in lines if line["logger"] == "leaky"]
    assert leaked and set(leaked) == {"calling upstream with key ***"}


def _capture(secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor(secrets))
    logger = logging.getLogger(f"test.redact.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


def test_redactor_masks_args_tracebacks_and_fields() -> None:
    logger, stream = _capture(["s3cret-value", "s3cret-value-longer"])
    logger.debug("args %s and %r", "s3cret-value-longer", {"k": "s3cret-value"})
    try:
        raise ValueError("bad s3cret-value")
    except ValueError:
        logger.exception("failed", extra={"delivery": "dlv_1", "hook": "h-s3cret-value"})
    out = stream.getvalue()
    assert "s3cret" not in out
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["message"] == "args *** and {'k': '***'}"
    assert first["level"] == "debug" and first["logger"].startswith("test.redact")
    assert second["delivery"] == "dlv_1" and second["hook"] == "h-***"
    assert "ValueError: bad ***" in second["exception"]


def test_collected_secrets_cover_the_config(tmp_path: Path) -> None:
    from clawdbot_webhooks.config import build_settings
    from clawdbot_webhooks.logs import collect_secrets
    from clawdbot_webhooks.testing import plugin_set_with

    plugins = plugin_set_with()
    raw: dict[str, Any] = {
        "stateDir": str(tmp_path),
        "incoming": {"secret": INCOMING},
        "admin": {"enabled": True, "token": ADMIN},
        "handlers": [
            {
                "id": "gh",
                "action": "run_agent",
                "agentId": "a",
                "template": "x",
                "verify": {"type": "github", "secrets": [GITHUB, "rotated-github-secret"]},
            },
            {
                "id": "f",
                "action": "forward",
                "url": "http://fwd:fwd-password@127.0.0.1:1/x?token=fwd-query-token",
                "headers": {"X-Api-Key": FORWARD},
            },
        ],
        "outgoing": [
            {
                "id": "s",
                "url": "https://hooks.slack.com/services/T0/B0/slack-path-secret",
                "events": ["*"],
                "secret": SIGNED,
            }
        ],
    }
    found = collect_secrets(build_settings(raw, plugins, None))
    assert {INCOMING, ADMIN, GITHUB, "rotated-github-secret", FORWARD, SIGNED, SIGNING_KEY} <= found
    assert {"fwd-password", "fwd-query-token", "slack-path-secret"} <= found


async def test_a_malformed_request_is_one_warning_line_without_its_bytes(
    start_server, caplog
) -> None:
    srv = await start_server(
        {"handlers": [{"id": "h", "action": "run_agent", "agentId": "a", "template": "x"}]}
    )
    bad = [
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + INCOMING.encode()
        + b"\r\n\r\n",
        b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nX-Long: " + INCOMING.encode() * 500 + b"\r\n\r\n",
    ]
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        for raw in bad:
            reader, writer = await asyncio.open_connection(srv.server.host, srv.server.port)
            writer.write(raw)
            await writer.drain()
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.0 400")
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "aiohttp.server"]) < len(bad):
            assert time.monotonic() < deadline, "aiohttp logged nothing"
            await asyncio.sleep(0.01)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING"]
    assert [r.getMessage() for r in records] == [
        "refused a malformed HTTP request from 127.0.0.1: Invalid character in Content-Length",
        "refused a malformed HTTP request from 127.0.0.1: Got more than 8190 bytes when reading",
    ]
    assert all(r.exc_info is None for r in records)
    assert INCOMING not in caplog.text


def test_log_throttle_counts_what_it_holds_back() -> None:
    from clawdbot_webhooks.logs import LogThrottle

    now = [0.0]
    throttle = LogThrottle(burst=3, interval=10.0, clock=lambda: now[0])
    assert [throttle.admit() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 9.9
    assert throttle.admit() == (False, 0)
    now[0] = 10.0  # a new interval: the first line says how many were held back
    assert [throttle.admit() for _ in range(4)] == [(True, 3), (True, 0), (True, 0), (False, 0)]


async def test_a_flood_of_malformed_requests_is_a_few_lines_and_a_count(
    start_server, caplog
) -> None:
    from clawdbot_webhooks.logs import LogThrottle, MalformedRequests

    srv = await start_server(
        {"handlers": [{"id": "h", "action": "run_agent", "agentId": "a", "template": "x"}]}
    )
    [quiet] = [
        f for f in logging.getLogger("aiohttp.server").filters if isinstance(f, MalformedRequests)
    ]
    now = [0.0]
    quiet.throttle = LogThrottle(burst=10, interval=60.0, clock=lambda: now[0])
    bad = b"POST /webhook/h HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"

    async def send_bad(count: int) -> None:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(srv.server.host, srv.server.port)
            writer.write(bad)
            await writer.drain()
            assert (await reader.read()).startswith(b"HTTP/1.0 400")
            writer.close()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"]

    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        await send_bad(50)
        deadline = time.monotonic() + 5
        while quiet.throttle.held_back < 40:
            assert time.monotonic() < deadline, "aiohttp logged fewer refusals than sent"
            await asyncio.sleep(0.01)
        assert len(lines()) == 10
        now[0] = 60.0
        await send_bad(1)
        while len(lines()) < 11:
            assert time.monotonic() < deadline, "the line after the interval never came"
            await asyncio.sleep(0.01)
    assert lines()[-1] == (
        "refused a malformed HTTP request from 127.0.0.1: Invalid character in Content-Length"
        " (40 more were refused and not logged since the last such line)"
    )


def test_a_text_record_is_one_line_whatever_its_message_holds() -> None:
    from clawdbot_webhooks.logs import TextFormatter

    record = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "sink answered %s: %s",
        (500, "oops\nfake WARN line\r\n"),
        None,
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith("x: sink answered 500: oops\\nfake WARN line\\r\\n")


def test_a_secret_is_masked_however_json_or_html_writes_it() -> None:
    """The admin API and dashboard mask the text they send: a secret with quotes, an
    ampersand, a backslash or non-ASCII in it is written differently there (escaped in JSON,
    once or twice, and in HTML), and masked all the same."""
    secret = 'Tr0ub4dor&3"horse\u2039\u00e9\\x'
    redactor = Redactor([secret])
    body = json.dumps({"title": f"leak {secret}"})
    for written in (
        secret,
        json.dumps({"payload": body}),
        json.dumps({"payload": body}, ensure_ascii=False),
        json.dumps({"title": secret}, ensure_ascii=False),
        str(markupsafe.escape(body)),
        str(markupsafe.escape(secret)),
    ):
        masked = redactor.redact(written)
        assert "Tr0ub4dor" not in masked and "***" in masked, masked

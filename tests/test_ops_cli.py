"""``send-test`` signs for every built-in verifier and a real server accepts it;
``deliveries list`` and ``deliveries tail`` (a real child process) show what happened."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from tests.conftest import write_config

WHSEC = "whsec_" + base64.b64encode(b"send-test-standard-key").decode()


def handler(hook: str, verify: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out = {"id": hook, "action": "run_agent", "agentId": "a", "template": "{{message}}", **extra}
    if verify:
        out["verify"] = verify
    return out


HANDLERS = [
    handler("shared", secret="shared-secret-value"),
    handler("bearer", {"type": "bearer", "secret": "bearer-token-value"}),
    handler("github", {"type": "github", "secret": "github-secret-value"}),
    handler("standard", {"type": "standard-webhooks", "secret": WHSEC}),
    handler("stripe", {"type": "stripe", "secret": "whsec_stripe_secret_value"}),
    handler("slack", {"type": "slack", "secret": "slack-signing-secret"}),
    handler(
        "custom-hmac",
        {
            "type": "hmac",
            "secret": "hmac-secret-value",
            "header": "X-Signature",
            "prefix": "sha512=",
            "algorithm": "sha512",
            "encoding": "base64",
            "timestampHeader": "X-Timestamp",
        },
    ),
    handler("gitlab", {"type": "gitlab", "secret": "gitlab-token-value"}),
    handler("shopify", {"type": "shopify", "secret": "shopify-client-secret"}),
    handler(
        "twilio",
        {"type": "twilio", "secret": "twilio-auth-token", "url": "https://example.com/sms"},
        template="{{Body}}",
    ),
    handler("linear", {"type": "linear", "secret": "linear-signing-secret"}),
    handler("sentry", {"type": "sentry", "secret": "sentry-client-secret"}),
    handler("telegram", {"type": "telegram", "secret": "telegram-secret-token"}),
    handler("basic", {"type": "basic", "username": "alertmanager", "password": "pw"}),
    handler("open", {"type": "none"}),
]


async def invoke(*args: str) -> Any:
    # The command blocks (urllib, its own event loop): run it beside the server's loop.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)


@pytest.fixture
async def served(start_server, state_dir: Path, tmp_path: Path) -> tuple[Any, Path]:
    webhooks = {"stateDir": str(state_dir), "handlers": HANDLERS}
    srv = await start_server(webhooks)
    return srv, write_config(tmp_path / "config.json5", webhooks)


@pytest.mark.parametrize("hook", [h["id"] for h in HANDLERS])
async def test_send_test_is_accepted(served, hook: str) -> None:
    srv, config = served
    url = f"{srv.base}/webhook/{hook}"
    result = await invoke("send-test", hook, "--config", str(config), "--url", url)
    assert result.exit_code == 0, result.output
    assert f"POST {url} -> 202" in result.output
    answer = json.loads(result.output.splitlines()[1])
    assert answer["ok"] is True
    await srv.idle()
    delivery = await srv.runtime.store.get_incoming(answer["id"])
    assert delivery is not None and delivery.status == "done"
    assert delivery.last_error is None


async def test_send_test_payload_from_stdin_and_wrong_secret(served, tmp_path: Path) -> None:
    srv, config = served
    url = f"{srv.base}/webhook/github"
    body = b'{"message": "from stdin"}'
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["send-test", "github", "--config", str(config), "--url", url, "--payload", "-"],
        input=body,
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.splitlines()[1])
    record = await srv.runtime.store.get_incoming(answer["id"])
    assert record is not None and record.body == body

    # The same hook configured with another secret: the server refuses, the exit code says so.
    wrong = json.loads(config.read_text())
    github = next(h for h in wrong["webhooks"]["handlers"] if h["id"] == "github")
    github["verify"]["secret"] = "not-the-secret"
    other = write_config(tmp_path / "wrong.json5", wrong["webhooks"])
    result = await invoke("send-test", "github", "--config", str(other), "--url", url)
    assert result.exit_code == 1
    assert "-> 401" in result.output
    result = await invoke("send-test", "nope", "--config", str(config), "--url", url)
    assert result.exit_code == 2 and "no handler 'nope'" in result.output


async def test_deliveries_list_json(served) -> None:
    srv, config = served
    ids = [(await srv.post("open", {"message": f"m{n}"}))[1]["id"] for n in range(3)]
    await srv.idle()
    result = await invoke("deliveries", "list", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["id"] for r in rows if r["kind"] == "incoming"] == list(reversed(ids))
    assert all(r["status"] == "done" for r in rows)
    result = await invoke("deliveries", "list", "--config", str(config), "--status", "dead")
    assert result.output.strip() == "No deliveries."


async def test_deliveries_tail_follows_live(served) -> None:
    srv, config = served
    # From a point taken now, so what finishes while the child is still starting counts too.
    since = str(int(time.time()))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clawdbot_webhooks",
        "deliveries",
        "tail",
        "--json",
        "--since",
        since,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ids = {(await srv.post("open", {"message": f"m{n}"}))[1]["id"] for n in range(3)}
        await srv.idle()
        seen: dict[str, dict[str, Any]] = {}
        assert child.stdout is not None
        while not ids <= set(seen):
            line = await asyncio.wait_for(child.stdout.readline(), timeout=15)
            assert line, (await child.stderr.read()).decode() if child.stderr else "eof"
            row = json.loads(line)
            seen[row["id"]] = row
        assert all(seen[i]["status"] == "done" and seen[i]["kind"] == "incoming" for i in ids)
        child.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(child.wait(), timeout=10) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_send_test_signs_with_a_private_key_for_discord_and_google(
    start_server, state_dir: Path, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm
    from nacl.signing import SigningKey

    seed = SigningKey.generate()
    (tmp_path / "discord.key").write_text(seed.encode().hex())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "google.pem").write_bytes(pem)
    hooks = [
        handler(
            "discord",
            {"type": "discord", "publicKey": seed.verify_key.encode().hex()},
            template="{{data.name}}",
        ),
        handler(
            "gmail",
            {
                "type": "google-oidc",
                "audience": "https://example.com/gmail",
                "email": "push@p.iam.gserviceaccount.com",
                "jwks": str(tmp_path / "jwks.json"),
            },
            template="{{message.data.message}}",
        ),
    ]
    webhooks = {"stateDir": str(state_dir), "handlers": hooks}
    srv = await start_server(webhooks)
    config = write_config(tmp_path / "config.json5", webhooks)
    for hook, key in (("discord", "discord.key"), ("gmail", "google.pem")):
        url = f"{srv.base}/webhook/{hook}"
        args = ["send-test", hook, "--config", str(config), "--url", url]
        result = await invoke(*args, "--signing-key", str(tmp_path / key))
        assert result.exit_code == 0, result.output
        assert f"POST {url} -> 202" in result.output
        # without the key it cannot sign, and says what it needs
        result = await invoke(*args)
        assert result.exit_code == 2
        assert "--signing-key" in result.output and "private key" in result.output
    # a key that is not the configured one is refused by the server
    (tmp_path / "other.key").write_text(SigningKey.generate().encode().hex())
    url = f"{srv.base}/webhook/discord"
    args = ["send-test", "discord", "--config", str(config), "--url", url]
    result = await invoke(*args, "--signing-key", str(tmp_path / "other.key"))
    assert result.exit_code == 1 and "-> 401" in result.output
    await srv.idle()
    replies = [m["text"] for m in srv.messages() if m["kind"] == "reply"]
    assert "[a #1] test" in replies and "[a #1] clawdbot-webhooks send-test" in replies


async def test_tail_gives_every_delivery_once_when_one_kind_fills_a_page(tmp_path: Path) -> None:
    """More deliveries of one kind than a look reads, and rows of the other kind that
    finished after that look's last: each is given once, in the order they finished (the
    cursor moved past the first kind's unread rows, which were never shown)."""
    import sqlite3

    from clawdbot_webhooks.cli.ops import TAIL_PAGE, Finished
    from clawdbot_webhooks.store import IncomingRecord, OutgoingOutcome, open_store
    from tests.conftest import outgoing_record

    path = tmp_path / "store.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        incoming = [
            IncomingRecord(f"dlv_{n:04d}", "h", 1.0, "application/json", b"{}", {}, {}, "ip", "s")
            for n in range(TAIL_PAGE + 105)
        ]
        for record in incoming:
            assert await store.add_incoming(record, 30)
            await store.finish_incoming(record.id, "done", attempts=1)
        outgoing = [outgoing_record(n, session=f"s{n}") for n in range(11)]
        await store.add_outgoing(outgoing, 30)
        await store.finish_outgoing_many([OutgoingOutcome(r.id, "done", 1) for r in outgoing])
    finally:
        await store.close()
    # Incoming rows finish 10 ms apart over six seconds; the outgoing ones just after the
    # TAIL_PAGE-th incoming row, long before the last ones.
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "UPDATE inbox SET finished_at=? WHERE id=?",
            [(1000.0 + n * 0.01, r.id) for n, r in enumerate(incoming)],
        )
        conn.executemany(
            "UPDATE outbox SET finished_at=? WHERE id=?",
            [(1000.0 + TAIL_PAGE * 0.01 + 0.005, r.id) for r in outgoing],
        )
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        follow, given, looks = Finished(900.0), [], 0
        while True:
            rows, caught_up = await follow.next(store)
            given += rows
            looks += 1
            if caught_up:
                break
    finally:
        await store.close()
    ids = [row.id for row in given]
    assert sorted(ids) == sorted([r.id for r in incoming] + [r.id for r in outgoing])
    assert len(ids) == len(set(ids))
    assert [row.finished_at for row in given] == sorted(row.finished_at for row in given)
    assert looks >= 2

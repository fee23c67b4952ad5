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
    handler("open"),
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
    wrong["webhooks"]["handlers"][2]["verify"]["secret"] = "not-the-secret"
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

"""No open handler by accident: a handler without authentication is a config error naming it
(``check`` and ``serve`` exit 2); ``verify: {type: "none"}`` is public on purpose, said once at
start."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from clawdbot_webhooks.cli import main


def _config(tmp_path: Path, *handlers: dict[str, Any], **incoming: Any) -> Path:
    path = tmp_path / "c.json5"
    webhooks = {"stateDir": str(tmp_path / "state"), "incoming": incoming, "handlers": handlers}
    path.write_text(json.dumps({"webhooks": webhooks}))
    return path


def _hook(hid: str, **more: Any) -> dict[str, Any]:
    return {
        "id": hid,
        "action": "send_message",
        "target": {"channel": "local", "peer": "me"},
        "template": "{{ text }}",
        **more,
    }


def test_check_refuses_an_unauthenticated_handler_by_name(tmp_path: Path) -> None:
    path = _config(tmp_path, _hook("signed", secret="s"), _hook("open-door"))
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert "webhooks.handlers[1]: handler 'open-door' has no authentication" in result.output
    assert "'signed'" not in result.output


def test_serve_refuses_an_unauthenticated_handler(tmp_path: Path) -> None:
    path = _config(tmp_path, _hook("open-door"))
    proc = subprocess.run(
        [sys.executable, "-m", "clawdbot_webhooks", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "handler 'open-door' has no authentication" in proc.stdout + proc.stderr


def test_any_of_the_three_kinds_of_authentication_is_enough(tmp_path: Path) -> None:
    for handlers, incoming in (
        ([_hook("a", secret="s")], {}),
        ([_hook("a")], {"secret": "s"}),
        ([_hook("a", verify={"type": "github", "secret": "s"})], {}),
        ([_hook("a", verify={"type": "none"})], {}),
        ([_hook("a", enabled=False)], {}),  # switched off: nothing to reach
    ):
        path = _config(tmp_path, *handlers, **incoming)
        result = CliRunner().invoke(main, ["check", "--config", str(path)])
        assert result.exit_code == 0, result.output


def test_a_public_handler_serves_and_is_announced_at_start(tmp_path: Path, server_process) -> None:
    server = server_process({"handlers": [_hook("open", verify={"type": "none"})]})
    server.start()
    try:
        request = urllib.request.Request(
            f"{server.base}/webhook/open",
            data=b'{"text": "hi"}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
    finally:
        assert server.terminate() == 0
    assert server.log is not None
    announced = [line for line in server.log.read_text().splitlines() if "public handlers" in line]
    assert len(announced) == 1 and "open" in announced[0]

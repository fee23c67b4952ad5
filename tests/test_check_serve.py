"""``check`` refuses what ``serve`` would refuse before listening, all of a file's errors at
once; ``serve`` reports those mistakes as config errors (exit 2), never as an outage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from clawdbot_webhooks.cli import main
from tests.conftest import POSTGRES_URL, write_config

RESERVED = "webhooks.storage.schema: 'pg_r1' is reserved by PostgreSQL for system schemas"
NO_DRIVER = (
    "webhooks.storage.url: PostgreSQL needs the asyncpg driver, which is not installed: "
    "pip install 'clawdbot-webhooks[postgres]'"
)


def _cli(*args: str, without_asyncpg: bool = False) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own; ``without_asyncpg`` runs it as if the
    PostgreSQL extra were not installed (the module cannot be imported)."""
    hide = "sys.modules['asyncpg'] = None; " if without_asyncpg else ""
    code = f"import sys; {hide}from clawdbot_webhooks.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def _errors(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("  ")]


def test_a_reserved_schema_name_is_a_config_error_for_check_and_serve(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.json",
        {"stateDir": str(tmp_path), "storage": {"url": POSTGRES_URL, "schema": "pg_r1"}},
    )
    checked = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert checked.exit_code == 2
    assert _errors(checked.output) == [RESERVED]
    served = _cli("serve", "--config", str(config), "--port", "0")
    assert served.returncode == 2
    assert _errors(served.stderr) == [RESERVED]
    assert "listening" not in served.stderr and "Traceback" not in served.stderr


def test_postgres_without_its_driver_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", {"storage": {"url": POSTGRES_URL}})
    for command in ("check", "serve"):
        done = _cli(command, "--config", str(config), without_asyncpg=True)
        assert done.returncode == 2, done.stderr
        assert _errors(done.stderr) == [NO_DRIVER]
        assert "Traceback" not in done.stderr and "listening" not in done.stderr
    # With the driver the same file passes; SQLite never needs it.
    assert _cli("check", "--config", str(config)).returncode == 0
    sqlite = write_config(tmp_path / "s.json", {"storage": {"url": f"sqlite:///{tmp_path}/x.db"}})
    assert _cli("check", "--config", str(sqlite), without_asyncpg=True).returncode == 0


def test_missing_variables_are_reported_with_every_other_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_A", raising=False)
    monkeypatch.delenv("NOT_SET_B", raising=False)
    config = tmp_path / "c.json5"
    config.write_text(
        """{webhooks: {
          incoming: {port: "x", secretHeader: "X-${NOT_SET_A}"},
          storage: {schema: "pg_r1"},
          handlers: [{id: "a", action: "teleport", secret: "${NOT_SET_B}"}],
        }}"""
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 2
    assert _errors(result.output) == [
        "webhooks.incoming.secretHeader: environment variable NOT_SET_A is not set",
        "webhooks.handlers[0].secret: environment variable NOT_SET_B is not set",
        "webhooks.incoming.port: Not a valid integer.",
        RESERVED,
        "webhooks.handlers[0].secret: Shorter than minimum length 1.",
        "webhooks.handlers[0].action: unknown action 'teleport' (known: custom, forward, "
        "run_agent, send_message, wake)",
    ]

"""The systemd unit under ``contrib/``: unit-file syntax (sections, ``Key=value`` lines, the
directives systemd knows in each section), and a command line ``serve`` accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawdbot_webhooks.cli import main

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "clawdbot-webhooks.service"

#: The directives this unit may use, per section (a subset of systemd.unit/service/exec/kill).
KNOWN = {
    "Unit": {"Description", "Documentation", "After", "Wants", "Requires", "Before"},
    "Service": {
        "Type",
        "ExecStart",
        "ExecReload",
        "EnvironmentFile",
        "Environment",
        "KillSignal",
        "TimeoutStopSec",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "NoNewPrivileges",
        "PrivateTmp",
        "WorkingDirectory",
    },
    "Install": {"WantedBy"},
}
BOOLEANS = {"NoNewPrivileges", "PrivateTmp"}


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """The unit as systemd reads it: ``[Section]`` headers, ``Key=value`` lines, ``#`` and
    ``;`` comments. Anything else is a syntax error."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number}: not Key=value in a section: {raw}"
        assert key.strip() == key and key, f"line {number}: bad key {key!r}"
        current.setdefault(key, []).append(value.strip())
    return sections


def test_the_unit_is_well_formed() -> None:
    unit = parse(UNIT.read_text())
    assert set(unit) == set(KNOWN)
    for section, keys in unit.items():
        unknown = set(keys) - KNOWN[section]
        assert not unknown, f"[{section}] unknown directives: {unknown}"
        for key, values in keys.items():
            if key in BOOLEANS:
                assert values == ["true"] or values == ["false"], key
    service = unit["Service"]
    assert service["Type"] == ["exec"]
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # live reload, no restart
    assert service["RestartPreventExitStatus"] == ["2"]  # config errors exit 2
    assert unit["Install"]["WantedBy"] == ["default.target"]  # a user service


def test_its_command_line_is_one_serve_accepts() -> None:
    (exec_start,) = parse(UNIT.read_text())["Service"]["ExecStart"]
    program, command, *options = shlex.split(exec_start)
    assert program.startswith(("/", "%h/")) and program.endswith("/clawdbot-webhooks")
    assert command == "serve"
    # Parsed by the real command line, stopping before it would start.
    result = CliRunner().invoke(main, ["serve", *options, "--help"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["serve", "--no-such-option", "--help"])
    assert bad.exit_code == 2  # the check above would catch an option serve lacks


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_itself_accepts_it(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("%h/.local/bin/clawdbot-webhooks", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)], capture_output=True, text=True
    )
    assert "error" not in result.stderr.lower(), result.stderr

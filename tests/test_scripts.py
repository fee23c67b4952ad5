"""The shell scripts users start with: ``scripts/ensure-venv`` installs only when a
``pyproject.toml`` changed, so ``scripts/serve`` starts without running pip again."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Stands in for the virtualenv's python: answers ``-m pip --version`` and records every
# install it is asked for, so the test sees whether the script would have run pip.
FAKE_PYTHON = """#!/bin/sh
if [ "$3" = "--version" ]; then echo "pip 0"; exit 0; fi
echo "$*" >> "$(dirname "$0")/../calls"
"""


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return venv


def _ensure(venv: Path, *extras: str) -> list[str]:
    subprocess.run(
        [str(ROOT / "scripts" / "ensure-venv"), *extras],
        env={**os.environ, "VENV": str(venv)},
        check=True,
        capture_output=True,
    )
    calls = venv / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines


def _digest() -> str:
    text = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "hookspecs/pyproject.toml").read_bytes()
    return hashlib.sha256(text).hexdigest()


def test_installs_once_then_only_when_a_pyproject_changes(tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    first = _ensure(venv, "test")
    assert any("install" in call and ".[test]" in call for call in first)
    # Installed with the test extras: neither the suite nor the server installs again.
    assert _ensure(venv, "test") == []
    assert _ensure(venv) == []
    # A stamp from another pyproject.toml (it changed since): install again.
    (venv / ".installed").write_text("0" * 64 + " test\n")
    assert any("install" in call for call in _ensure(venv))
    assert _ensure(venv) == []
    # The server's install (no extras) does not stand for the suite's.
    assert any(".[test]" in call for call in _ensure(venv, "test"))
    stamp = (venv / ".installed").read_text().split()
    assert stamp.count(_digest()) == 2


def test_a_failed_install_shows_its_output_and_leaves_no_stamp(tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    (venv / "bin" / "python").write_text(
        FAKE_PYTHON.replace('echo "$*"', 'echo "no such package" >&2; exit 1; echo "$*"')
    )
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-venv")],
        env={**os.environ, "VENV": str(venv)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "no such package" in result.stderr
    assert not (venv / ".installed").exists()

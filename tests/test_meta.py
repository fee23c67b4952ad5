"""Tests about the plugin API itself: every hook is documented in docs/plugins.md with its real
signature and used by at least one test; every public type of hookspecs is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import clawdbot_webhooks_hookspecs
import pytest
from clawdbot_webhooks_hookspecs import specs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
TEST_FILES = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins-contrib/*/tests/*.py")]
TEST_SOURCE = "\n".join(p.read_text() for p in TEST_FILES if p.name != "test_meta.py")

HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(specs, inspect.isfunction)
    if hasattr(fn, "clawdbot_webhooks_spec")
)


def test_the_hooks_are_found() -> None:
    assert "register_actions" in HOOKS and "on_event" in HOOKS and len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    params = ", ".join(inspect.signature(getattr(specs, hook)).parameters)
    assert f"### `{hook}({params})`" in GUIDE, f"docs/plugins.md has no section for {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test_that_implements_it(hook: str) -> None:
    assert re.search(rf"def {hook}\(", TEST_SOURCE), f"no test implements {hook}"


@pytest.mark.parametrize("name", clawdbot_webhooks_hookspecs.__all__)
def test_public_name_is_documented(name: str) -> None:
    assert re.search(rf"`{re.escape(name)}[`(]", GUIDE), f"docs/plugins.md never names {name}"


def test_dataclass_fields_are_documented() -> None:
    import dataclasses

    missing = []
    for name in clawdbot_webhooks_hookspecs.__all__:
        obj = getattr(clawdbot_webhooks_hookspecs, name)
        if not (inspect.isclass(obj) and dataclasses.is_dataclass(obj)):
            continue
        row = next((line for line in GUIDE.splitlines() if line.startswith(f"| `{name}")), "")
        missing += [f"{name}.{f.name}" for f in dataclasses.fields(obj) if f"`{f.name}`" not in row]
    assert missing == []


def test_guide_version_matches_the_distribution() -> None:
    pyproject = (ROOT / "hookspecs" / "pyproject.toml").read_text()
    version = re.search(r'^version = "(\d+)\.(\d+)\.\d+"', pyproject, re.M)
    assert version is not None
    assert f"**{version[1]}.{version[2]}**" in GUIDE, "docs/plugins.md's history is behind"

"""The built-in plugins are written exactly like third-party ones: no module in
``clawdbot_webhooks/builtin/`` imports the runtime outside ``builtin/`` (only the plugin API,
``clawdbot_webhooks_hookspecs``, and each other), and no runtime module imports a built-in
plugin (the runtime finds them through their entry points)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clawdbot_webhooks"
BUILTIN = PACKAGE / "builtin"


def imports(path: Path) -> set[str]:
    """Every module the file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n == "clawdbot_webhooks" or n.startswith("clawdbot_webhooks.")}


def test_the_check_sees_imports() -> None:
    assert "clawdbot_webhooks_hookspecs" in imports(BUILTIN / "local_gateway.py")
    assert "clawdbot_webhooks.plugins" in imports(PACKAGE / "runtime.py")


def test_builtins_import_only_the_plugin_api_and_each_other() -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            n for n in ours(imports(path)) if not n.startswith("clawdbot_webhooks.builtin")
        )
        for path in BUILTIN.rglob("*.py")
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_runtime_never_imports_a_builtin() -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            n for n in ours(imports(path)) if n.startswith("clawdbot_webhooks.builtin")
        )
        for path in PACKAGE.rglob("*.py")
        if BUILTIN not in path.parents
    }
    assert {path: names for path, names in wrong.items() if names} == {}

"""Where Clawdbot (or OpenClaw) keeps its state and its config file, as Clawdbot itself
resolves them (since 1.7). Only paths: the runtime looks for its own file beside Clawdbot's,
and a gateway plugin reads what it needs from Clawdbot's file, which nobody here writes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _user_path(text: str) -> Path:
    return Path(text.strip()).expanduser().resolve()


def state_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Clawdbot's state directory, then OpenClaw's (where each keeps its config)."""
    env = os.environ if env is None else env
    dirs = []
    for var, default in (
        ("CLAWDBOT_STATE_DIR", "~/.clawdbot"),
        ("OPENCLAW_STATE_DIR", "~/.openclaw"),
    ):
        given = env.get(var, "").strip()
        dirs.append(_user_path(given) if given else Path(default).expanduser())
    return dirs


def find_clawdbot_config(env: Mapping[str, str] | None = None) -> Path | None:
    """Clawdbot's config file, if there is one."""
    env = os.environ if env is None else env
    clawdbot_dir, openclaw_dir = state_dirs(env)
    given = env.get("CLAWDBOT_CONFIG_PATH", "").strip()
    candidates = [_user_path(given)] if given else []
    candidates.append(clawdbot_dir / "clawdbot.json")
    given = env.get("OPENCLAW_CONFIG_PATH", "").strip()
    if given:
        candidates.append(_user_path(given))
    candidates.append(openclaw_dir / "openclaw.json")
    return next((path for path in candidates if path.is_file()), None)

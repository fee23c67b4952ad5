"""Where our config file is, and telling it apart from Clawdbot's own.

Our file is ``webhooks.json5`` beside Clawdbot's state (``~/.clawdbot``, or
``$CLAWDBOT_STATE_DIR``; OpenClaw's ``~/.openclaw`` / ``$OPENCLAW_STATE_DIR`` after it). It is
never Clawdbot's ``clawdbot.json``: Clawdbot validates its file strictly and refuses to start
with a key it does not know, so our settings cannot live there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import find_clawdbot_config, state_dirs

CONFIG_ENV = "CLAWDBOT_WEBHOOKS_CONFIG"
FILE_NAME = "webhooks.json5"
#: The names Clawdbot and OpenClaw give their own config files.
CLAWDBOT_FILE_NAMES = frozenset({"clawdbot.json", "openclaw.json"})
#: Top-level keys of Clawdbot's config; a file with some of them and no ``webhooks`` is its.
CLAWDBOT_KEYS = frozenset(
    {"gateway", "agents", "models", "channels", "hooks", "plugins", "auth", "meta", "wizard"}
)
#: Keys only our section has.
OUR_KEYS = frozenset({"incoming", "handlers", "outgoing", "storage", "stateDir", "sessions"})


def search_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where ``serve`` and the other commands look when given no ``--config``."""
    return [directory / FILE_NAME for directory in state_dirs(env)]


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """Where ``init`` writes: beside the Clawdbot (or OpenClaw) config found, else in
    Clawdbot's state directory."""
    clawdbot_dir, openclaw_dir = state_dirs(env)
    found = find_clawdbot_config(env)
    if found is not None and found.name == "openclaw.json" and found.parent == openclaw_dir:
        return openclaw_dir / FILE_NAME
    return clawdbot_dir / FILE_NAME


def find_config(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file: ``--config``, then ``$CLAWDBOT_WEBHOOKS_CONFIG``, then the first of
    :func:`search_paths` that exists; ``None`` means the built-in defaults."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    given = env.get(CONFIG_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    return next((path for path in search_paths(env) if path.is_file()), None)


def clawdbots_own(path: Path, document: Any) -> str | None:
    """Why ``path`` is Clawdbot's config rather than ours (one line), or ``None``. A file
    with keys of our section at its top is ours without its ``webhooks`` wrapper (the
    loader says so), though it shares a key with Clawdbot's (``gateway``)."""
    if path.name in CLAWDBOT_FILE_NAMES or (
        isinstance(document, Mapping)
        and "webhooks" not in document
        and CLAWDBOT_KEYS.intersection(document)
        and not OUR_KEYS.intersection(document)
    ):
        return (
            f"{path} is Clawdbot's own config, which clawdbot-webhooks never reads or writes "
            f"(Clawdbot refuses to start with a 'webhooks' key in it); ours belongs in "
            f"{default_path()} (create it with: clawdbot-webhooks init)"
        )
    return None

"""Reading Clawdbot's own config file, read-only, for what the gateways need to reach it.

Where Clawdbot keeps it: ``$CLAWDBOT_CONFIG_PATH``, else ``clawdbot.json`` in its state
directory (``$CLAWDBOT_STATE_DIR``, default ``~/.clawdbot``), else OpenClaw's
``openclaw.json`` (``$OPENCLAW_CONFIG_PATH``, ``$OPENCLAW_STATE_DIR``, ``~/.openclaw``).
``${VAR}`` in a value is resolved as Clawdbot does: upper-case names only, ``$${VAR}`` stays
literal, and an unset or empty variable is an error (for the values read here only, so a
variable our gateway does not need may be missing).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json5
from clawdbot_webhooks_hookspecs import find_clawdbot_config

DEFAULT_PORT = 18789
DEFAULT_HOOKS_PATH = "/hooks"
_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class ClawdbotConfigError(Exception):
    """Clawdbot's config exists but a value we need cannot be read from it."""


def substitute(value: str, env: Mapping[str, str], where: str) -> str:
    """``${VAR}`` resolved the way Clawdbot resolves it in its config."""
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char == "$" and value.startswith("${", i + 1):
            end = value.find("}", i + 3)
            if end != -1 and _NAME.fullmatch(value[i + 3 : end]):
                out.append(value[i + 1 : end + 1])  # $${VAR} -> ${VAR}
                i = end + 1
                continue
        if char == "$" and value.startswith("{", i + 1):
            end = value.find("}", i + 2)
            name = value[i + 2 : end] if end != -1 else ""
            if _NAME.fullmatch(name):
                if not env.get(name):
                    raise ClawdbotConfigError(
                        f"environment variable {name} (used at {where}) is not set"
                    )
                out.append(env[name])
                i = end + 1
                continue
        out.append(char)
        i += 1
    return "".join(out)


def read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClawdbotConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = json5.loads(text)
        except ValueError as exc:
            raise ClawdbotConfigError(f"{path}: not valid JSON5: {exc}") from exc
    if not isinstance(document, dict):
        raise ClawdbotConfigError(f"{path}: the top level is not an object")
    return document


@dataclass(frozen=True)
class Found:
    """One value read from Clawdbot's config (or its environment) and where it came from."""

    value: Any
    origin: str


class ClawdbotConfig:
    """Clawdbot's settings that matter to us, each with the place it was read from."""

    def __init__(
        self,
        path: Path | None,
        document: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.env = os.environ if env is None else env
        self.document: Mapping[str, Any] = document or {}

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> ClawdbotConfig:
        path = find_clawdbot_config(env)
        return cls(path, read_document(path) if path else None, env)

    def _get(self, *keys: str) -> Found | None:
        value: Any = self.document
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        where = ".".join(keys)
        if isinstance(value, str):
            value = substitute(value, self.env, where)
        return Found(value, f"{self.path} {where}")

    def _env(self, name: str) -> Found | None:
        value = self.env.get(name, "").strip()
        return Found(value, f"${name}") if value else None

    def host(self) -> Found:
        """Where a client on this machine reaches the gateway, from ``gateway.bind``."""
        bind = self._get("gateway", "bind")
        if bind is not None and bind.value == "custom":
            custom = self._get("gateway", "customBindHost")
            if custom is not None and isinstance(custom.value, str) and custom.value.strip():
                return Found(custom.value.strip(), custom.origin)
        # loopback, lan (0.0.0.0), auto and tailnet (which falls back to loopback) all answer
        # on 127.0.0.1 from this machine, as far as the config can tell.
        return Found("127.0.0.1", bind.origin if bind is not None else "default")

    def port(self) -> Found:
        found = self._env("CLAWDBOT_GATEWAY_PORT")
        if found is not None and found.value.isdigit() and int(found.value) > 0:
            return Found(int(found.value), found.origin)
        port = self._get("gateway", "port")
        if port is not None and isinstance(port.value, int) and port.value > 0:
            return port
        return Found(DEFAULT_PORT, "default")

    def tls(self) -> bool:
        found = self._get("gateway", "tls", "enabled")
        return found is not None and found.value is True

    def gateway_url(self, scheme: str) -> Found:
        """``ws``/``http`` URL of the gateway; the origin names where host and port came from."""
        host, port = self.host(), self.port()
        secure = "s" if self.tls() else ""
        origins = sorted({host.origin, port.origin} - {"default"}) or ["default"]
        bracketed = f"[{host.value}]" if ":" in host.value else host.value
        return Found(f"{scheme}{secure}://{bracketed}:{port.value}", ", ".join(origins))

    def gateway_token(self) -> Found | None:
        found = self._get("gateway", "auth", "token")
        if found is not None and isinstance(found.value, str) and found.value:
            return found
        return self._env("CLAWDBOT_GATEWAY_TOKEN")

    def hooks_path(self) -> Found:
        found = self._get("hooks", "path")
        if found is not None and isinstance(found.value, str) and found.value.strip():
            path = "/" + found.value.strip().strip("/")
            return Found(path, found.origin)
        return Found(DEFAULT_HOOKS_PATH, "default")

    def hooks_token(self) -> Found | None:
        found = self._get("hooks", "token")
        if found is not None and isinstance(found.value, str) and found.value:
            return found
        return None


def discover(
    options: Mapping[str, Any], wanted: Mapping[str, str], env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill the options left out (``None``) from Clawdbot's config.

    ``wanted`` maps an option to the ``ClawdbotConfig`` value it comes from (``ws_url``,
    ``http_url``, ``gateway_token``, ``hooks_path``, ``hooks_token``). Returns the options and,
    for each, where it came from (``config`` when it was given).
    """
    filled = dict(options)
    sources = {key: "webhooks config" for key in wanted if filled.get(key) is not None}
    missing = [key for key in wanted if filled.get(key) is None]
    if not missing:
        return filled, sources
    clawdbot = ClawdbotConfig.load(env)
    for key in missing:
        what = wanted[key]
        found: Found | None
        if what == "ws_url":
            found = clawdbot.gateway_url("ws")
        elif what == "http_url":
            found = clawdbot.gateway_url("http")
        else:
            found = getattr(clawdbot, what)()
        if found is None:
            continue
        filled[key] = found.value
        sources[key] = found.origin if found.origin != "default" else "built-in default"
    return filled, sources


def describe(sources: Mapping[str, str]) -> str:
    """``url from …, token from …`` for ``check --probe`` and the start-up log."""
    return "; ".join(f"{key} from {origin}" for key, origin in sources.items()) or "as configured"

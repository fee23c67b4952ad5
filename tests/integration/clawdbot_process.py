"""A real Clawdbot gateway in a child process.

The install comes from ``scripts/ensure-clawdbot``; each gateway gets a scratch ``HOME`` with
``.clawdbot/clawdbot.json``, a free loopback port and its own token, and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "scripts" / "ensure-clawdbot"
BRIDGE = ROOT / "clawdbot_webhooks" / "clawdbot-event-bridge"
#: The bearer token the bridge plugin in the shared gateway sends to our ingress.
INGRESS_TOKEN = os.urandom(12).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_install() -> tuple[str, str]:
    """Run the install recipe; (node, entry.js). Raises RuntimeError saying why it failed."""
    proc = subprocess.run([str(ENSURE)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/ensure-clawdbot failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    found = dict(
        line.split(": ", 1)
        for line in proc.stdout.splitlines()
        if line.startswith(("node: ", "entry: "))
    )
    return found["node"], found["entry"]


def gateway_config(
    scratch: Path,
    port: int,
    token: str,
    hooks_token: str,
    model_url: str,
    plugins: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "gateway": {
            "mode": "local",
            "bind": "loopback",
            "port": port,
            "auth": {"mode": "token", "token": token},
        },
        "hooks": {"enabled": True, "token": hooks_token, "path": "/hooks"},
        "plugins": plugins or {"enabled": False},
        "update": {"checkOnStart": False},
        "logging": {"file": str(scratch / "clawdbot.log")},
        "models": {
            "mode": "replace",
            "providers": {
                "stub": {
                    "baseUrl": model_url,
                    "apiKey": "stub-key",
                    "api": "openai-completions",
                    "models": [
                        {
                            "id": "stub-model",
                            "name": "Stub model",
                            "contextWindow": 200000,
                            "maxTokens": 4096,
                            "input": ["text"],
                            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        }
                    ],
                }
            },
        },
        "agents": {
            "defaults": {
                "model": {"primary": "stub/stub-model"},
                "skipBootstrap": True,
                "heartbeat": {"every": "0m"},
                "workspace": str(scratch / "workspace"),
            }
        },
    }


def bridge_plugins(ingress_url: str, ingress_token: str) -> dict[str, Any]:
    """Clawdbot's ``plugins`` section that loads only the event bridge."""
    return {
        "enabled": True,
        "allow": ["clawdbot-event-bridge"],
        "load": {"paths": [str(BRIDGE)]},
        "entries": {
            "clawdbot-event-bridge": {
                "enabled": True,
                "config": {"url": ingress_url, "token": ingress_token, "retries": 5},
            }
        },
    }


@dataclass
class ClawdbotProcess:
    node: str
    entry: str
    scratch: Path
    model_url: str
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: os.urandom(12).hex())
    hooks_token: str = field(default_factory=lambda: os.urandom(12).hex())
    plugins: dict[str, Any] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.scratch / "gateway.out"

    def write_config(self) -> None:
        home = self.scratch / "home"
        (home / ".clawdbot").mkdir(parents=True, exist_ok=True)
        (self.scratch / "workspace").mkdir(parents=True, exist_ok=True)
        config = gateway_config(
            self.scratch, self.port, self.token, self.hooks_token, self.model_url, self.plugins
        )
        (home / ".clawdbot" / "clawdbot.json").write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 90.0, *, write: bool = True) -> None:
        """Start the gateway; ``write=False`` keeps the config file as it is (a restart)."""
        if write:
            self.write_config()
        home = self.scratch / "home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "CLAWDBOT_NO_RESPAWN": "1",
            "CLAWDBOT_SKIP_CHANNELS": "1",
            "CLAWDBOT_SKIP_BROWSER_CONTROL_SERVER": "1",
            "CLAWDBOT_SKIP_CANVAS_HOST": "1",
            "CLAWDBOT_SKIP_GMAIL_WATCHER": "1",
            "CLAWDBOT_DISABLE_BONJOUR": "1",
            "NO_COLOR": "1",
        }
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.node,
                self.entry,
                "gateway",
                "run",
                "--bind",
                "loopback",
                "--port",
                str(self.port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(self.scratch),
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clawdbot gateway exited: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"clawdbot gateway did not open port {self.port}: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


def gateway_options(gateway: ClawdbotProcess, **extra: Any) -> dict[str, Any]:
    return {
        "type": "clawdbot",
        "url": gateway.url,
        "token": gateway.token,
        "reconnectDelay": 0.05,
        "reconnectMaxDelay": 0.5,
        "offlineWait": 30,
        "agentTimeout": 60,
        **extra,
    }


FAST_RETRY = {"maxAttempts": 3, "initialDelay": 0.05, "maxDelay": 0.2}

"""Installing plugins for real: a fresh virtualenv (no system site-packages) gets the hookspecs,
the runtime, the three contrib packages and the guide's example plugin from locally built
wheels; then `plugins` lists them, `serve` runs them end to end, and switching one off in the
config removes what it registers."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clawdbot_webhooks.builtin.local_gateway import read_log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "tests", ".venv", "*.pyc")
CONTRIB = {
    "github": ("clawdbot-webhooks-github", "0.1.0"),
    "digest": ("clawdbot-webhooks-digest", "0.1.0"),
    "jsonl": ("clawdbot-webhooks-jsonl", "0.1.0"),
}
GH_SECRET = "fresh-venv-gh-secret"


def run(*args: Any, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def guide_example(into: Path) -> Path:
    """The package the guide's example blocks describe, written where the guide says."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"<!-- example-plugin: (\S+) -->\n```\w+\n(.*?)```", guide, re.S)
    assert {path for path, _ in blocks} == {"clawdbot_webhooks_shout/__init__.py", "pyproject.toml"}
    for path, text in blocks:
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return into


def build_wheels(tmp: Path) -> Path:
    sources = tmp / "src"
    runtime = sources / "runtime"
    runtime.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", runtime)
    shutil.copy(ROOT / "README.md", runtime)
    shutil.copytree(ROOT / "clawdbot_webhooks", runtime / "clawdbot_webhooks", ignore=IGNORE)
    shutil.copytree(ROOT / "hookspecs", sources / "hookspecs", ignore=IGNORE)
    for name in CONTRIB:
        shutil.copytree(ROOT / "plugins-contrib" / name, sources / name, ignore=IGNORE)
    guide_example(sources / "shout")
    wheels = tmp / "wheels"
    dirs = [sources / d for d in ("hookspecs", "runtime", *CONTRIB, "shout")]
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", wheels, *dirs)  # fmt: skip
    return wheels


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv, wheelhouse): a real fresh venv holding the runtime and its dependencies."""
    tmp = tmp_path_factory.mktemp("fresh")
    wheels = build_wheels(tmp)
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    third_party = [d for d in deps if not d.startswith("clawdbot-webhooks")]
    got = run(*pip, *third_party, check=False)
    if got.returncode != 0:
        pytest.skip(f"the package index is not reachable for the runtime's dependencies: "
                    f"{got.stderr.strip()[-300:]}")  # fmt: skip
    # Our own packages only from the wheels just built, never from an index.
    run(*pip, "--no-index", "--find-links", wheels, "clawdbot-webhooks")
    return venv, wheels


def plugins_json(venv: Path, config: Path) -> dict[str, dict[str, Any]]:
    done = run(venv / "bin" / "clawdbot-webhooks", "plugins", "--json", "--config", config)
    return {p["name"]: p for p in json.loads(done.stdout)}


def write(path: Path, webhooks: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"webhooks": webhooks}))
    return path


def post(url: str, payload: Any, headers: dict[str, str] | None = None) -> int:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, body, {"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_pip_install_makes_plugins_usable(fresh: tuple[Path, Path], tmp_path: Path) -> None:
    venv, wheels = fresh
    state = tmp_path / "state"
    empty = write(tmp_path / "empty.json", {"stateDir": str(state)})
    before = plugins_json(venv, empty)
    assert not set(CONTRIB) & set(before) and "forward-action" in before
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
        "--find-links", wheels, *(d for d, _ in CONTRIB.values()),
        "clawdbot-webhooks-shout")  # fmt: skip
    # The runtime is the only thing that imports the runtime: the plugins need only hookspecs.
    for dist, _ in CONTRIB.values():
        code = f"import importlib.metadata as m; print(m.requires({dist!r}))"
        requires = run(venv / "bin" / "python", "-c", code).stdout
        assert "clawdbot-webhooks-hookspecs" in requires
        assert "'clawdbot-webhooks>" not in requires and "'clawdbot-webhooks'" not in requires

    listing = plugins_json(venv, empty)
    for name, (dist, version) in CONTRIB.items():
        info = listing[name]
        assert (info["distribution"], info["version"], info["enabled"]) == (dist, version, True)
        assert info["reason"] == "installed" and not info["builtin"]
    assert listing["github"]["registers"]["actions"] == ["github_notify"]
    assert "github_summary" in listing["github"]["registers"]["filters"]
    assert listing["digest"]["registers"] == {"actions": ["digest"]}
    assert listing["jsonl"]["registers"] == {"transports": ["jsonl"]}
    assert listing["shout"]["registers"] == {"actions": ["shout"], "filters": ["sparkle"]}
    table = run(venv / "bin" / "clawdbot-webhooks", "plugins", "--all", "--config", empty).stdout
    assert re.search(
        r"digest\s+clawdbot-webhooks-digest\s+0\.1\.0\s+enabled\s+actions: digest", table
    )
    assert "hooks: on_incoming, register_actions, register_template_filters" in table

    events = tmp_path / "out" / "events.jsonl"
    config = write(
        tmp_path / "config.json",
        {
            "stateDir": str(state),
            "handlers": [
                {"id": "gh", "action": "github_notify", "target": {"channel": "c", "peer": "dev"},
                 "link": False, "verify": {"type": "github", "secret": GH_SECRET}},
                {"id": "dg", "action": "digest", "window": 0.3, "template": "{{ n }}",
                 "target": {"channel": "c", "peer": "ops"}, "title": "{count} on {hook}",
                 "verify": {"type": "none"}},
                {"id": "yell", "action": "shout", "template": "{{ text | sparkle }}",
                 "peer": "dev", "verify": {"type": "none"}},
            ],
            "outgoing": [{"id": "log", "transport": "jsonl", "url": events.as_uri(),
                          "events": ["message_received"]}],
        },
    )  # fmt: skip
    assert run(venv / "bin" / "clawdbot-webhooks", "check", "--config", config).returncode == 0
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [venv / "bin" / "clawdbot-webhooks", "serve", "--config", config, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}/webhook"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "serve died"
                time.sleep(0.05)
        push = {
            "ref": "refs/heads/main",
            "commits": [{"message": "Fix it"}],
            "repository": {"full_name": "octo/hello"},
            "sender": {"login": "alice"},
        }
        signature = hmac.new(GH_SECRET.encode(), json.dumps(push).encode(), hashlib.sha256)
        gh_headers = {
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": "sha256=" + signature.hexdigest(),
        }
        assert post(f"{base}/gh", push, gh_headers) == 202
        assert post(f"{base}/gh", push, {**gh_headers, "X-Hub-Signature-256": "sha256=00"}) == 401
        assert post(f"{base}/dg", {"n": "one"}) == 202
        assert post(f"{base}/dg", {"n": "two"}) == 202
        assert post(f"{base}/yell", {"text": "hello"}) == 202
        assert post(f"{base}/yell", {"text": "ping", "zen": "x"}) == 202  # dropped by on_incoming
        wanted = {
            "alice pushed 1 commit to octo/hello main: Fix it",
            "2 on dg\n• one\n• two",
            "*HELLO*",
        }
        deadline = time.monotonic() + 20
        while True:
            texts = (
                {m["text"] for m in read_log(state) if m["kind"] == "sent"}
                if state.exists()
                else set()
            )
            if texts >= wanted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert texts == wanted
        while not events.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert {line["body"]["type"] for line in lines} == {"message_received"}
        assert "*hello*" in {line["body"]["message"]["text"] for line in lines}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    # Switched off: what it registered is gone, and check names it for the handler using it.
    off = json.loads(config.read_text())
    off["webhooks"]["plugins"] = {"disabled": ["digest"]}
    config.write_text(json.dumps(off))
    listing = plugins_json(venv, config)
    assert listing["digest"]["enabled"] is False
    assert listing["digest"]["reason"] == "disabled in webhooks.plugins.disabled"
    assert listing["digest"]["registers"] == {"actions": ["digest"]}
    checked = run(venv / "bin" / "clawdbot-webhooks", "check", "--config", config, check=False)
    assert checked.returncode == 2
    assert (
        "webhooks.handlers[1].action: action 'digest' is provided by plugin 'digest', "
        "which is disabled in webhooks.plugins.disabled"
    ) in checked.stderr + checked.stdout


CONTRACT_PLUGIN = '''
"""Every form of hook implementation pluggy documents, as a third party would write them."""

from __future__ import annotations

import dataclasses
import time

from clawdbot_webhooks_hookspecs import Template, hookimpl
from marshmallow import Schema, fields

TIMINGS: list[float] = []
EVENTS: list[int] = []


def _mark(delivery, mark):
    text = delivery.payload["text"] + mark
    return dataclasses.replace(delivery, payload={**delivery.payload, "text": text})


class Report:
    class schema(Schema):
        template = Template(required=True)
        peer = fields.String(load_default="dev")

    async def run(self, ctx):
        text = f"{ctx.options['template']} timed={len(TIMINGS)} events={len(EVENTS) > 0}"
        await ctx.gateway.send_message(channel="c", peer=ctx.options["peer"], text=text,
                                       session=ctx.session, idempotency_key=ctx.idempotency_key)
        return {"text": text}


class First:
    @hookimpl(tryfirst=True)
    def on_incoming(self, delivery):
        return _mark(delivery, "F")


class Last:
    @hookimpl(trylast=True)
    def on_incoming(self, delivery, handler):
        return _mark(delivery, "L" if handler.action == "report" else "?")


class Timer:
    @hookimpl(wrapper=True)
    def on_incoming(self):
        started = time.monotonic()
        try:
            return (yield)
        finally:
            TIMINGS.append(time.monotonic() - started)


@hookimpl
def on_incoming(delivery):
    return _mark(delivery, "M")


@hookimpl
def on_event():
    EVENTS.append(1)


@hookimpl
def register_actions(register):
    register("report", Report())


# Entry points may name objects: pluggy registers these instances.
first, last, timer = First(), Last(), Timer()
'''

CONTRACT_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "clawdbot-webhooks-contract"
version = "0.2.0"
requires-python = ">=3.11"
dependencies = ["clawdbot-webhooks-hookspecs>=1.3,<2", "marshmallow>=3.20"]

[project.entry-points.clawdbot_webhooks]
contract = "cw_contract"
contract-first = "cw_contract:first"
contract-last = "cw_contract:last"
contract-timer = "cw_contract:timer"

[tool.setuptools]
py-modules = ["cw_contract"]
"""


def test_every_documented_form_of_hook_works_installed(
    fresh: tuple[Path, Path], tmp_path: Path
) -> None:
    """on_incoming(delivery) without handler, on_event() without arguments, tryfirst and
    trylast, a wrapper=True timer around the chain and an action with a marshmallow schema,
    from a package installed with pip into a fresh virtualenv."""
    venv, wheels = fresh
    source = tmp_path / "contract"
    source.mkdir()
    (source / "cw_contract.py").write_text(CONTRACT_PLUGIN)
    (source / "pyproject.toml").write_text(CONTRACT_PYPROJECT)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", wheels, source)  # fmt: skip
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
        "--find-links", wheels, "clawdbot-webhooks-contract")  # fmt: skip
    state = tmp_path / "state"
    config = write(
        tmp_path / "config.json",
        {
            "stateDir": str(state),
            "handlers": [
                {
                    "id": "r",
                    "action": "report",
                    "template": "{{ text }}",
                    "verify": {"type": "none"},
                }
            ],
        },
    )
    listing = plugins_json(venv, config)
    assert listing["contract"]["registers"] == {"actions": ["report"]}
    assert {"contract-first", "contract-last", "contract-timer"} <= set(listing)
    assert run(venv / "bin" / "clawdbot-webhooks", "check", "--config", config).returncode == 0
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [venv / "bin" / "clawdbot-webhooks", "serve", "--config", config, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "serve died"
                time.sleep(0.05)
        assert post(f"http://127.0.0.1:{port}/webhook/r", {"text": "hi"}) == 202
        texts: list[str] = []
        while not texts and time.monotonic() < deadline:
            texts = (
                [m["text"] for m in read_log(state) if m["kind"] == "sent"]
                if state.exists()
                else []
            )
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    # tryfirst, then the plain one, then trylast, each seeing what the one before returned;
    # the wrapper finished timing the chain before the action ran; on_event() was called.
    assert texts == ["hiFML timed=1 events=True"], (tmp_path / "serve.log").read_text()[-2000:]


def test_init_bridge_finds_the_plugin_shipped_in_the_wheel(
    fresh: tuple[Path, Path], tmp_path: Path
) -> None:
    """`init --bridge` installed from a wheel, outside any checkout: the event-bridge plugin
    it hands to Clawdbot's CLI is the copy inside the installed package, complete."""
    venv, _ = fresh
    calls = tmp_path / "calls"
    cli = tmp_path / "recording-clawdbot"
    cli.write_text(f"import sys\nopen({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    config = tmp_path / "webhooks.json5"
    done = run(
        venv / "bin" / "clawdbot-webhooks", "init", "--bridge", "--config", config,
        "--clawdbot", f"{venv / 'bin' / 'python'} {cli}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    install = calls.read_text().splitlines()[0]
    assert install.startswith("plugins install ")
    source = Path(install.removeprefix("plugins install "))
    assert source.name == "clawdbot-event-bridge"
    assert str(venv) in str(source), "the plugin must come from the installed package"
    assert {"index.js", "clawdbot.plugin.json", "package.json"} <= {
        p.name for p in source.iterdir()
    }

"""Live reload under steady load: handlers added, changed and removed by editing the config
file and by SIGHUP, a broken file refused, while clients keep posting. No request fails, and
every accepted delivery reaches the outgoing subscriber exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.slow

ADMIN = "reload-admin-token-0123456789"


#: The serve process's handlers are public on purpose: the test posts without a secret.
PUBLIC = {"type": "none"}


def handlers(version: str, *extra: str) -> list[dict[str, Any]]:
    made = [
        {
            "id": "steady",
            "action": "run_agent",
            "agentId": "main",
            "template": f"{version} {{{{ n }}}}",
            "verify": PUBLIC,
        }
    ]
    made += [
        {
            "id": hook,
            "action": "run_agent",
            "agentId": "main",
            "template": f"{hook} {{{{ n }}}}",
            "verify": PUBLIC,
        }
        for hook in extra
    ]
    return made


async def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_reload_under_load_loses_and_fails_nothing(
    server_process: Any, make_sink: Any, tmp_path: Path
) -> None:
    sink = await make_sink()
    webhooks: dict[str, Any] = {
        "handlers": handlers("v1", "gone"),
        "outgoing": [{"id": "sink", "url": sink.url, "events": ["agent_response"]}],
        "admin": {"enabled": True, "token": ADMIN},
    }
    proc = server_process(webhooks)
    await asyncio.to_thread(proc.start)
    config: Path = proc.config
    auth = {"Authorization": f"Bearer {ADMIN}"}

    def write(changed: dict[str, Any]) -> None:
        full = json.loads(config.read_text())
        full["webhooks"].update(changed)
        config.write_text(json.dumps(full, indent=2))

    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as client:

        async def post(hook: str, n: int) -> tuple[int, dict[str, Any]]:
            async with client.post(f"{proc.base}/webhook/{hook}", json={"n": n}) as resp:
                return resp.status, await resp.json()

        async def steady(worker: int) -> None:
            n = 0
            while not stop.is_set():
                status, body = await post("steady", worker * 1_000_000 + n)
                statuses[status] += 1
                if status == 202:
                    accepted.append(body["session"])
                n += 1
                # A steady rate, not as fast as intake goes: intake outruns the agent runs on
                # two cores, and a growing backlog would only delay the replies checked here.
                await asyncio.sleep(0.01)

        async def reloads() -> dict[str, Any]:
            async with client.get(f"{proc.base}/admin/api/config", headers=auth) as resp:
                assert resp.status == 200
                return dict(await resp.json())

        async def reply_of(hook: str) -> str:
            status, body = await post(hook, 7)
            assert status == 202, body

            async def arrived() -> str | None:
                for item in sink.received:
                    event = json.loads(item["body"])
                    if event["session"] == body["session"]:
                        return str(event["response"]["text"])
                return None

            return str(await wait_for(arrived, f"the reply to {hook}"))

        load = [asyncio.create_task(steady(w)) for w in range(4)]
        try:
            await wait_for(lambda: _now(len(accepted) > 50), "the load to start")
            state = await _steps(post, reply_of, reloads, write, config, proc)
        finally:
            stop.set()
            failures = await asyncio.gather(*load, return_exceptions=True)
        assert failures == [None] * 4, failures

        async with client.get(f"{proc.base}/metrics") as resp:
            metrics = await resp.text()
        applied_line = (
            f'clawdbot_webhooks_config_reloads_total{{result="applied"}} {state["applied"]}.0'
        )
        assert applied_line in metrics
        assert 'clawdbot_webhooks_config_reloads_total{result="refused"} 1.0' in metrics

    # Zero failed requests; every accepted delivery answered exactly once.
    assert set(statuses) == {202}, statuses
    expected = set(accepted)
    assert len(expected) == len(accepted) > 100

    async def all_arrived() -> bool:
        return expected <= {json.loads(i["body"])["session"] for i in sink.received}

    await wait_for(all_arrived, "every accepted delivery's reply")
    sessions = Counter(json.loads(i["body"])["session"] for i in sink.received)
    assert all(sessions[s] == 1 for s in expected)
    log = Path(proc.log).read_text() if proc.log else ""
    assert "config reload refused: webhooks.handlers[0].action" in log
    assert "incoming.port changed; this takes a restart" in log
    assert proc.terminate() == 0


async def _when(value: Any, test: Any) -> Any:
    got = await value
    return got if test(got) else None


async def _now(value: Any) -> Any:
    return value


async def _steps(
    post: Any, reply_of: Any, reloads: Any, write: Any, config: Path, proc: Any
) -> dict[str, Any]:
    """Edits, a broken file, SIGHUP and a restart-only key, each checked once it applied."""
    assert "v1 7" in await reply_of("steady")

    async def applied_after(count: int, what: str) -> dict[str, Any]:
        state = await wait_for(lambda: _when(reloads(), lambda s: s["applied"] > count), what)
        return dict(state)

    # 1. Edited file: one handler added, one changed, one removed.
    write({"handlers": handlers("v2", "added")})
    state = await applied_after(0, "the edit to apply")
    assert state["last"]["trigger"] == "file" and state["last"]["result"] == "applied"
    assert "v2 7" in await reply_of("steady")
    assert "added 7" in await reply_of("added")
    status, body = await post("gone", 1)
    assert status == 404 and "gone" in body["error"]

    # 2. A broken file is refused, with key paths, and the running config stays.
    applied = state["applied"]
    write({"handlers": [{"id": "steady", "action": "no_such_action"}], "gateway": 5})
    state = await wait_for(
        lambda: _when(reloads(), lambda s: s["refused"] >= 1), "the broken file's refusal"
    )
    assert any(e.startswith("webhooks.handlers[0].action:") for e in state["last"]["errors"])
    assert any(e.startswith("webhooks.gateway") for e in state["last"]["errors"])
    assert state["applied"] == applied
    assert "added 7" in await reply_of("added")

    # 3. SIGHUP, for a change of the same size and modification time that only the
    # signal can tell.
    write({"handlers": handlers("v4", "added"), "gateway": {"type": "local"}})
    state = await applied_after(applied, "the repaired file")
    assert "v4 7" in await reply_of("steady")
    before = os.stat(config)
    config.write_text(config.read_text().replace('"v4 {{ n }}"', '"v5 {{ n }}"'))
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    state = await applied_after(state["applied"], "the SIGHUP reload")
    assert state["last"]["trigger"] == "signal"
    assert "v5 7" in await reply_of("steady")

    # 4. A key bound at start is logged as needing a restart; the rest applies.
    write({"incoming": {"port": 1}, "handlers": handlers("v6", "added")})
    state = await applied_after(state["applied"], "the port change")
    assert state["last"]["restartNeeded"] == ["incoming.port"]
    assert "v6 7" in await reply_of("steady")
    assert "added 7" in await reply_of("added")

    return state


async def test_a_subscription_added_by_a_reload_gets_the_events_nobody_took_before(
    server_process: Any, make_sink: Any
) -> None:
    """Whether anyone takes an event type is worked out once and kept: a reload that adds a
    subscription for the ephemeral session's events must be heard from the next webhook on,
    though nobody took those events for the webhooks before it."""
    sink = await make_sink()
    proc = server_process({"handlers": handlers("v1"), "admin": {"enabled": True, "token": ADMIN}})
    await asyncio.to_thread(proc.start)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as client:

        async def post(n: int) -> dict[str, Any]:
            async with client.post(f"{proc.base}/webhook/steady", json={"n": n}) as resp:
                assert resp.status == 202
                return dict(await resp.json())

        async def state() -> dict[str, Any]:
            async with client.get(f"{proc.base}/admin/api/config", headers=auth) as resp:
                return dict(await resp.json())

        async def finished(delivery: str) -> bool:
            url = f"{proc.base}/admin/api/incoming/{delivery}"
            async with client.get(url, headers=auth) as resp:
                return resp.status == 200 and (await resp.json())["status"] == "done"

        first = await post(1)
        await wait_for(lambda: finished(first["id"]), "the first delivery to finish")
        full = json.loads(proc.config.read_text())
        full["webhooks"]["outgoing"] = [
            {
                "id": "late",
                "url": sink.url,
                "events": ["session_started", "message_received", "session_ended"],
            }
        ]
        proc.config.write_text(json.dumps(full, indent=2))
        await wait_for(lambda: _when(state(), lambda s: s["applied"] >= 1), "the new subscription")
        second = await post(2)

        def types_for(session: str) -> list[str]:
            events = [json.loads(item["body"]) for item in sink.received]
            return sorted(e["type"] for e in events if e["session"] == session)

        await wait_for(
            lambda: _now(len(types_for(second["session"])) == 3), "the second webhook's events"
        )
    assert types_for(second["session"]) == ["message_received", "session_ended", "session_started"]
    assert types_for(first["session"]) == []
    assert proc.terminate() == 0


async def test_a_secret_a_reload_brings_is_masked_in_the_admin_api_and_dashboard(
    server_process: Any,
) -> None:
    """A secret added by a reload is masked where the admin shows text, as in the log: the
    one masker the runtime keeps learns it with the reload."""
    first, rotated = "s3cret-initial-AAAA", 'rotated&"<BBBB\\secret'
    hook = {"id": "h", "action": "send_message", "target": {"channel": "c", "peer": "p"}}
    proc = server_process(
        {
            "incoming": {"secret": first},
            "handlers": [{**hook, "template": "{{ title }}"}],
            "admin": {"enabled": True, "token": ADMIN},
        }
    )
    await asyncio.to_thread(proc.start)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as client:

        async def applied() -> bool:
            async with client.get(f"{proc.base}/admin/api/config", headers=auth) as resp:
                return (await resp.json())["applied"] >= 1

        full = json.loads(proc.config.read_text())
        full["webhooks"]["incoming"]["secret"] = rotated
        proc.config.write_text(json.dumps(full, indent=2))
        await wait_for(applied, "the reload with the new secret")
        title = f"leak {rotated} and {first}"
        headers = {"X-Webhook-Secret": rotated}
        async with client.post(
            f"{proc.base}/webhook/h", json={"title": title}, headers=headers
        ) as r:
            assert r.status == 202
            delivery = (await r.json())["id"]
        shown = []
        for path in (f"/admin/api/incoming/{delivery}", f"/admin/deliveries/{delivery}"):
            async with client.get(f"{proc.base}{path}", headers=auth) as resp:
                assert resp.status == 200, path
                shown.append(await resp.text())
    assert proc.terminate() == 0
    for text in shown:
        assert "BBBB" not in text and "AAAA" not in text, text[:2000]
        assert "***" in text


def test_sighup_without_a_config_file_leaves_the_server_running(tmp_path: Path) -> None:
    """On the built-in defaults there is no file to reload, but SIGHUP (a service manager's
    "reload") must not end the process, as the signal's default would."""
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import free_port

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CLAWDBOT_WEBHOOKS_CONFIG"}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawdbot_webhooks", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while b"webhooks listener on" not in (tmp_path / "serve.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None, "SIGHUP ended the server"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
        assert b"no config file to reload" in (tmp_path / "serve.log").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

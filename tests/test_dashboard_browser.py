"""The dashboard in headless Chromium: sign in, see a dead-lettered outgoing delivery, click
Replay, and a real sink receives it. Saves screenshots under ``test-results/``.

Under ``CI=true`` a missing Chromium fails the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import Event

from clawdbot_webhooks.outgoing.outbox import outbox_id

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "test-results"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "dashboard-token-0123456789"
ONCE = {"maxAttempts": 1, "initialDelay": 0.05, "jitter": False}
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1100",
)


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if not missing:
        return
    reason = f"headless browser test needs {', '.join(missing)} (apt-get install chromium "
    reason += "chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class Browser:
    """A Selenium-driven Chromium; every call blocks, so the test runs them in a thread
    while the event loop keeps serving."""

    def __init__(self, profile: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        self.driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER), options=options
        )
        self.driver.set_page_load_timeout(20)

    def wait(self, condition: Any, timeout: float = 15.0) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # An element found just before the page redrew it is looked for again.
        wait = WebDriverWait(
            self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
        )
        return wait.until(condition)

    def sign_in(self, base: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(f"{base}/admin/")
        assert self.driver.current_url.endswith("/admin/login")  # redirected: not signed in
        self.driver.find_element(By.ID, "token").send_keys(TOKEN)
        self.driver.find_element(By.ID, "sign-in").click()
        self.wait(lambda d: d.current_url.endswith("/admin/"))
        assert TOKEN not in self.driver.current_url

    def replay(self, delivery_id: str) -> str:
        from selenium.webdriver.common.by import By

        row = self.wait(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-row="{delivery_id}"]'))
        assert "HTTP 500" in row.text
        # Let the throughput chart draw before the picture is taken.
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart rect"))
        self.shot("dashboard-dead-letter.png")
        row.find_element(By.CSS_SELECTOR, "button.replay").click()
        # The text as it was seen: the page reloads itself two seconds later, and the button
        # read again after that would be gone.
        return str(
            self.wait(
                lambda d: (
                    (
                        text := d.find_element(
                            By.CSS_SELECTOR, f'button[data-id="{delivery_id}"]'
                        ).text
                    )
                    in ("Queued ✓", "Failed")
                    and text
                )
            )
        )

    def after_replay(self, base: str, delivery_id: str) -> str:
        from selenium.webdriver.common.by import By

        self.driver.get(f"{base}/admin/deliveries/{delivery_id}")
        status = str(self.wait(lambda d: d.find_element(By.ID, "status")).text)
        self.shot("dashboard-delivery.png")
        self.driver.get(f"{base}/admin/")
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart rect"))
        self.shot("dashboard-overview.png")
        return status

    def shot(self, name: str) -> None:
        RESULTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(RESULTS / name))

    def quit(self) -> None:
        self.driver.quit()


async def test_dashboard_replays_a_dead_letter(start_server, make_sink) -> None:
    _browser_or_skip()
    good = await make_sink()
    flaky = await make_sink(default=500)
    srv = await start_server(
        {
            "admin": {"enabled": True, "token": TOKEN},
            "handlers": [
                {"id": "github", "action": "run_agent", "agentId": "dev", "template": "PR {{n}}"}
            ],
            "outgoing": [
                {"id": "slack", "url": good.url, "events": ["message_received"], "retry": ONCE},
                {"id": "crm", "url": flaky.url, "events": ["agent_response"], "retry": ONCE},
            ],
        }
    )
    for n in range(4):  # some history for the chart and the health table
        assert (await srv.post("github", {"n": n}))[0] == 202
    await srv.idle()
    event = Event("agent_response", {"text": "deployed", "agentId": "dev", "runId": "r1"})
    await srv.runtime.bus.publish(event)
    delivery = outbox_id(event.id, "crm")
    deadline = time.monotonic() + 10
    while (await srv.runtime.store.get_outgoing(delivery)).status != "dead":  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    flaky.default = 200  # the endpoint is fixed; now the click must deliver
    received_before = len(flaky.received)

    profile = tempfile.mkdtemp(prefix="cw-chromium-")
    browser = await asyncio.to_thread(Browser, profile)
    try:
        await asyncio.to_thread(browser.sign_in, srv.base)
        label = await asyncio.to_thread(browser.replay, delivery)
        assert label == "Queued ✓"
        await flaky.wait_for(received_before + 1)
        assert flaky.json_bodies()[-1]["id"] == event.id
        deadline = time.monotonic() + 10
        while (await srv.runtime.store.get_outgoing(delivery)).status != "done":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        status = await asyncio.to_thread(browser.after_replay, srv.base, delivery)
        assert status == "done"
    finally:
        await asyncio.to_thread(browser.quit)
        shutil.rmtree(profile, ignore_errors=True)
    assert (RESULTS / "dashboard-dead-letter.png").stat().st_size > 0

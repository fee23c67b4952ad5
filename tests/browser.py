"""Headless Chromium for the dashboard tests: a Selenium driver whose every call blocks, so
tests run them in a thread (``asyncio.to_thread``) while the event loop keeps serving.

Under ``CI=true`` a missing Chromium fails the test; elsewhere it skips with the reason.
Screenshots go to ``test-results/`` (``scripts/dashboard-screenshots`` copies the ones the
docs show into ``docs/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "test-results"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "dashboard-token-0123456789"
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


def browser_or_skip() -> None:
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

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """The page's viewport exactly this size (a window can be no narrower than ~500 px)."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def listed(self) -> list[str]:
        """The ids the overview's delivery list shows, top to bottom."""
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, "#delivery-list tbody tr")
        return [str(r.get_attribute("data-row")) for r in rows]

    def overflow(self) -> int:
        """How far the page scrolls sideways (0: not at all)."""
        return int(
            self.driver.execute_script(
                "const e = document.documentElement; return e.scrollWidth - e.clientWidth"
            )
        )

    def too_wide(self) -> list[str]:
        """The elements that reach past the page's right edge (outside boxes that scroll)."""
        return list(
            self.driver.execute_script(
                """
                const width = document.documentElement.clientWidth;
                const out = [];
                for (const e of document.body.querySelectorAll("*")) {
                  const inBox = e.parentElement.closest(".scroll, pre");
                  if (inBox && getComputedStyle(e).position !== "absolute") continue;
                  const r = e.getBoundingClientRect();
                  if (r.right > width + 0.5) out.push(`${e.tagName}.${e.className}#${e.id}`);
                }
                return out.slice(0, 10);
                """
            )
        )

    def shot(self, name: str) -> None:
        RESULTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(RESULTS / name))

    def quit(self) -> None:
        self.driver.quit()


B = TypeVar("B", bound=Browser)


@contextlib.asynccontextmanager
async def chromium(kind: type[B]) -> AsyncIterator[B]:
    """A browser of ``kind`` (``Browser`` or a subclass with a test's own steps)."""
    browser_or_skip()
    profile = tempfile.mkdtemp(prefix="cw-chromium-")
    browser = await asyncio.to_thread(kind, profile)
    try:
        yield browser
    finally:
        await asyncio.to_thread(browser.quit)
        shutil.rmtree(profile, ignore_errors=True)

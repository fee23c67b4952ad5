"""The overview's delivery list in headless Chromium against a real server: filters and text
search narrow it and live in the URL (a reload lists the same), a new delivery appears
without a reload, live updates pause, the dead letters a filter shows are replayed in bulk
after a confirmation that gives their count, and at a phone's width the page does not
scroll sideways."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.browser import Browser, chromium

ONCE = {"maxAttempts": 1, "initialDelay": 0.05, "jitter": False}


class ListBrowser(Browser):
    def open(self, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(url)
        # Loaded once the live indicator says so.
        self.wait(lambda d: "updated" in d.find_element(By.ID, "live-state").text)

    def mark(self) -> None:
        """A flag in the page that a reload would lose."""
        self.driver.execute_script("window.__notReloaded = true")

    def not_reloaded(self) -> bool:
        return bool(self.driver.execute_script("return window.__notReloaded === true"))

    def more(self) -> bool:
        """Press "Load older" if it is there; False once there is nothing older."""
        from selenium.webdriver.common.by import By

        button = self.driver.find_element(By.ID, "load-more")
        if not button.is_displayed():
            return False
        shown = len(self.listed())
        self.press("load-more")
        # A full last page has a next one that turns out empty: the button goes.
        self.wait(lambda d: len(self.listed()) > shown or not button.is_displayed())
        return True

    def statuses(self) -> set[str]:
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, "#delivery-list tbody tr")
        return {str(r.get_attribute("data-status")) for r in rows}

    def filter(self, **fields: str) -> None:
        """Fill in the filter form with the keyboard and submit it."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import Select

        form = self.driver.find_element(By.ID, "filters")
        for name, value in fields.items():
            field = form.find_element(By.NAME, name)
            if field.tag_name == "select":
                Select(field).select_by_value(value)
            else:
                field.clear()
                field.send_keys(value)
        self.mark()
        form.find_element(By.NAME, "q").send_keys(Keys.ENTER)
        # The form is a GET: the filtered view is a new page, its URL the filter.
        self.wait(lambda d: not self.not_reloaded())
        self.wait(lambda d: "updated" in d.find_element(By.ID, "live-state").text)

    def press(self, element_id: str) -> None:
        """Activate a button from the keyboard (focus, then Enter)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver.find_element(By.ID, element_id).send_keys(Keys.ENTER)

    def text(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.ID, element_id).text)

    def bulk_question(self) -> str:
        from selenium.webdriver.common.by import By

        self.press("bulk-replay")
        self.wait(lambda d: d.find_element(By.ID, "bulk-dialog").is_displayed())
        return self.text("bulk-question")


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_filters_search_live_and_bulk_replay(start_server, make_sink) -> None:
    sink = await make_sink()
    broken = await make_sink(default=500)
    srv = await start_server(
        {
            "admin": {"enabled": True, "token": "dashboard-token-0123456789"},
            "handlers": [
                {"id": "chat", "action": "run_agent", "agentId": "dev", "template": "hi {{n}}"},
                {"id": "relay", "action": "forward", "url": broken.url, "retry": ONCE},
            ],
            "outgoing": [{"id": "log", "url": sink.url, "events": ["agent_response"]}],
        }
    )
    chats = [(await srv.post("chat", {"n": n}))[1]["id"] for n in range(3)]
    relays = [(await srv.post("relay", {"n": n}))[1]["id"] for n in range(3)]
    await srv.idle()
    assert {d.id for d in await srv.runtime.store.dead_letters()} == set(relays)
    base = srv.base

    async with chromium(ListBrowser) as browser:
        b = browser

        def step(fn: Any, *args: Any, **kwargs: Any) -> Any:
            return asyncio.to_thread(fn, *args, **kwargs)

        await step(b.sign_in, base)
        await step(b.open, f"{base}/admin/")
        listed = await step(b.listed)
        assert set(chats + relays) <= set(listed)
        assert listed.index(relays[2]) < listed.index(relays[0])  # newest first

        # Pages: "Load older" goes on across both directions, each delivery once, in order.
        await step(b.open, f"{base}/admin/?limit=4")
        assert await step(b.listed) == listed[:4]
        while await step(b.more):
            pass
        assert await step(b.listed) == listed

        # Status filter: only the dead ones, and the URL says so.
        await step(b.filter, status="dead")
        assert "status=dead" in b.driver.current_url
        assert set(await step(b.listed)) == set(relays)
        assert await step(b.statuses) == {"dead"}

        # Text search narrows further; the filtered view survives a reload.
        await step(b.filter, q=relays[1][-8:])
        assert await step(b.listed) == [relays[1]]
        await step(b.open, b.driver.current_url)
        assert await step(b.listed) == [relays[1]]
        await step(b.open, f"{base}/admin/?q=no-such-delivery")
        assert await step(b.listed) == []
        assert await step(b.text, "list-empty") == "No deliveries match."

        # Live: a delivery made now shows up in the open list without a reload.
        await step(b.open, f"{base}/admin/?target=hook:chat")
        await step(b.mark)
        fresh = (await srv.post("chat", {"n": 9}))[1]["id"]
        await step(b.wait, lambda d: b.listed()[:1] == [fresh])
        assert await step(b.not_reloaded)
        assert not set(relays) & set(await step(b.listed))  # the filter still holds
        # Paused from the keyboard, and resumed.
        await step(b.press, "live-toggle")
        await step(b.wait, lambda d: b.text("live-state").startswith("Paused"))
        assert b.driver.find_element("id", "live-toggle").get_attribute("aria-pressed") == "true"
        later = (await srv.post("chat", {"n": 10}))[1]["id"]
        await srv.idle()
        await step(b.press, "live-toggle")
        await step(b.wait, lambda d: b.listed()[:1] == [later])
        assert await step(b.not_reloaded)

        # Bulk replay of a filtered set: two of the three dead relays (the search picks them).
        broken.default = 200
        await step(b.open, f"{base}/admin/?status=dead&target=hook:relay")
        assert set(await step(b.listed)) == set(relays)
        assert "recovered" not in await step(b.text, "hook-relay")
        question = await step(b.bulk_question)
        assert question.startswith("Replay 3 dead letters matching this filter?")
        await step(b.press, "bulk-cancel")
        # The key's handler may run after the key was sent: waited for, as below.
        await step(b.wait, lambda d: b.text("bulk-result") == "Nothing replayed.")
        assert len(broken.received) == 3  # nothing sent by looking
        await step(b.filter, q=relays[0][-8:])
        await step(b.mark)
        assert await step(b.bulk_question) == (
            "Replay 1 dead letter matching this filter? "
            "Each runs or is sent again from its first attempt."
        )
        await step(b.press, "bulk-confirm")
        await step(b.wait, lambda d: b.text("bulk-result") == "1 of 1 queued again.")
        await broken.wait_for(4)
        await srv.idle()

        async def replayed() -> bool:
            record = await srv.runtime.store.get_incoming(relays[0])
            return record is not None and record.status == "done"

        await _until(replayed)
        # The list follows: the replayed one leaves the dead letters.
        await step(b.wait, lambda d: b.listed() == [])
        remaining = {d.id for d in await srv.runtime.store.dead_letters()}
        assert remaining == {relays[1], relays[2]}
        # The hook's last error is now older than its last success: shown as recovered, and
        # without a reload.
        await step(b.wait, lambda d: "recovered" in b.text("hook-relay"))
        assert "forward answered 500" in await step(b.text, "hook-relay")
        assert await step(b.not_reloaded)

        # A phone's width: nothing scrolls sideways but the tables in their own boxes.
        await step(b.viewport, 375, 812, True)
        await step(b.open, f"{base}/admin/")
        assert await step(b.overflow) == 0, await step(b.too_wide)
        await step(b.shot, "dashboard-375.png")

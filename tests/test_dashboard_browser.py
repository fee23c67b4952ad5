"""The dashboard in headless Chromium: sign in, see a dead-lettered outgoing delivery, click
Replay, and a real sink receives it. Saves screenshots under ``test-results/``.

Under ``CI=true`` a missing Chromium fails the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import asyncio
import time

from clawdbot_webhooks_hookspecs import Event

from clawdbot_webhooks.outgoing.outbox import outbox_id
from tests.browser import RESULTS, TOKEN, Browser, chromium

ONCE = {"maxAttempts": 1, "initialDelay": 0.05, "jitter": False}


class ReplayingBrowser(Browser):
    def replay(self, delivery_id: str) -> str:
        from selenium.webdriver.common.by import By

        row = self.wait(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-row="{delivery_id}"]'))
        assert "HTTP 500" in row.text
        # Let the throughput chart draw before the picture is taken.
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart rect"))
        self.shot("dashboard-dead-letter.png")
        row.find_element(By.CSS_SELECTOR, "button.replay").click()
        # The text as it was seen: the list redraws the row from the API once it has changed,
        # and the button read again after that would be gone.
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


async def test_dashboard_replays_a_dead_letter(start_server, make_sink) -> None:
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

    async with chromium(ReplayingBrowser) as browser:
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
    assert (RESULTS / "dashboard-dead-letter.png").stat().st_size > 0

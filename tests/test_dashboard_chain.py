"""The chain page and the session view in headless Chromium against a real server: webhooks
run through ``run_agent`` (the embedded ``local`` gateway's echo agent) in one persistent
session, their events go to two subscriptions on real loopback sinks. The chain page shows
the incoming delivery, its events and both outgoing deliveries, with links both ways; the
session view lists the session's deliveries and events in time order. Takes the pictures
``scripts/dashboard-screenshots`` copies into docs/ (1280x800)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.browser import TOKEN, Browser, chromium


class ChainBrowser(Browser):
    def open(self, url: str) -> None:
        self.driver.get(url)

    def attr(self, css: str, name: str) -> list[str]:
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return [str(e.get_attribute(name)) for e in found]

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def follow(self, css: str) -> str:
        """Follow a link from the keyboard (focus it, Enter); returns the new URL."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        before = self.driver.current_url
        self.driver.find_element(By.CSS_SELECTOR, css).send_keys(Keys.ENTER)
        self.wait(lambda d: d.current_url != before)
        return str(self.driver.current_url)

    def overview(self, base: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(f"{base}/admin/")
        self.wait(lambda d: "updated" in d.find_element(By.ID, "live-state").text)
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart rect"))


async def _api(srv: Any, path: str) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with srv.session.get(f"{srv.base}{path}", headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_chain_page_and_session_view(start_server, make_sink) -> None:
    slack, crm = await make_sink(), await make_sink()
    srv = await start_server(
        {
            "admin": {"enabled": True, "token": TOKEN},
            "handlers": [
                {
                    "id": "support",
                    "action": "run_agent",
                    "agentId": "dev",
                    "template": "Ticket {{n}}: {{title}}",
                    "sessionMode": "persistent",
                    "sessionKey": "support-desk",
                }
            ],
            "outgoing": [
                {
                    "id": "slack",
                    "url": slack.url,
                    "events": ["message_received", "agent_response"],
                },
                {"id": "crm", "url": crm.url, "events": ["agent_response"]},
            ],
        }
    )
    first = (await srv.post("support", {"n": 1, "title": "login fails"}))[1]["id"]
    await srv.idle()
    await slack.wait_for(2)
    await crm.wait_for(1)
    second = (await srv.post("support", {"n": 2, "title": "refund"}))[1]["id"]
    await srv.idle()
    await slack.wait_for(4)
    await crm.wait_for(2)

    shown = await _api(srv, f"/admin/api/incoming/{first}")
    session = shown["session"]
    assert session
    events = shown["caused"]
    by_type = {e["type"]: e for e in events}
    response = by_type["agent_response"]
    subscriptions = {d["subscription"]: d["id"] for d in response["deliveries"]}
    assert set(subscriptions) == {"slack", "crm"}  # both outgoing deliveries of the answer
    to_crm = subscriptions["crm"]
    outgoing = {d["id"] for e in events for d in e["deliveries"]}
    # What the sinks got is what the chain says was sent.
    sent = {b["id"] for b in slack.json_bodies() + crm.json_bodies()}
    assert {e["id"] for e in events if e["deliveries"]} <= sent

    async with chromium(ChainBrowser) as b:

        def step(fn: Any, *args: Any) -> Any:
            return asyncio.to_thread(fn, *args)

        base = srv.base
        await step(b.sign_in, base)
        await step(b.viewport, 1280, 800)
        await step(b.overview, base)
        await step(b.shot, "dashboard.png")

        # The chain: the incoming delivery, its events in order, each one's deliveries.
        await step(b.open, f"{base}/admin/chain/{first}")
        assert await step(b.text, "#chain-incoming") == first
        assert await step(b.attr, "li.event", "id") == [f"event-{e['id']}" for e in events]
        assert set(await step(b.attr, "tr[data-out]", "data-out")) == outgoing
        assert await step(b.overflow) == 0
        await step(b.shot, "dashboard-chain.png")

        # Outgoing → the incoming that caused it and its event, and back.
        url = await step(b.follow, f'tr[data-out="{to_crm}"] a')
        assert url.endswith(f"/admin/deliveries/{to_crm}")
        assert await step(b.text, "#caused-by") == first
        url = await step(b.follow, "#event-link")
        assert url.endswith(f"/admin/chain/{to_crm}#event-{response['id']}")
        assert await step(b.attr, "tr[aria-current=true]", "data-out") == [to_crm]
        assert await step(b.text, "#chain-incoming") == first
        url = await step(b.follow, "#chain-incoming")
        assert url.endswith(f"/admin/deliveries/{first}")
        url = await step(b.follow, "#chain-link")
        assert url.endswith(f"/admin/chain/{first}")
        url = await step(b.follow, f'tr[data-out="{to_crm}"] a')
        assert url.endswith(f"/admin/deliveries/{to_crm}")
        assert await step(b.follow, "#caused-by") == f"{base}/admin/deliveries/{first}"

        # The session view, reached from the list's session column.
        await step(b.overview, base)
        url = await step(b.follow, f'tr[data-row="{first}"] td:nth-child(4) a')
        assert "/admin/session?key=" in url
        assert await step(b.text, "#session-key") == session
        kinds = await step(b.attr, "#timeline tbody tr", "data-kind")
        ids = await step(b.attr, "#timeline tbody tr", "data-id")
        times = [float(t) for t in await step(b.attr, "#timeline tbody tr", "data-at")]
        assert times == sorted(times)  # in time order
        assert [i for k, i in zip(kinds, ids, strict=True) if k == "incoming"] == [first, second]
        # The first webhook's events and deliveries come after it and before the second.
        between = ids[ids.index(first) + 1 : ids.index(second)]
        assert {e["id"] for e in events} | outgoing <= set(between)
        await step(b.shot, "dashboard-session.png")
        # In pages of three: "Later →" goes on to the end, each item once, in the same order.
        await step(b.open, f"{base}/admin/session?key={session}&limit=3")
        paged = await step(b.attr, "#timeline tbody tr", "data-id")
        while await step(b.attr, "#session-later", "href"):
            await step(b.follow, "#session-later")
            paged += await step(b.attr, "#timeline tbody tr", "data-id")
        assert paged == ids
        await step(b.viewport, 375, 812, True)
        await step(b.open, f"{base}/admin/session?key={session}")
        assert await step(b.overflow) == 0
        await step(b.open, f"{base}/admin/chain/{first}")
        assert await step(b.overflow) == 0
        await step(b.shot, "dashboard-chain-375.png")

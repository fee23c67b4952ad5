"""Credentials inside URLs: masked wherever a URL is shown, and known to the log filter."""

from __future__ import annotations

from typing import Any

import pytest

from clawdbot_webhooks.credentials import mask_url, url_credentials


@pytest.mark.parametrize(
    ("url", "shown", "secrets"),
    [
        ("https://hooks.example/in", "https://hooks.example/in", []),
        (
            "https://user:pa55word@h.example:8443/p?x=1",
            "https://user:***@h.example:8443/p?x=1",
            ["pa55word"],
        ),
        ("https://ghp_TOKENasUSER@h.example/p", "https://***@h.example/p", ["ghp_TOKENasUSER"]),
        (
            "https://h.example/p?token=t0k3n&page=2&api_key=k3y&Signature=s1g",
            "https://h.example/p?token=***&page=2&api_key=***&Signature=***",
            ["t0k3n", "k3y", "s1g"],
        ),
        (
            "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX",
            "https://hooks.slack.com/services/T000/B000/***",
            ["XXXXSECRETXXXX"],
        ),
        (
            "https://discord.com/api/webhooks/123456/tok-EN_value",
            "https://discord.com/api/webhooks/123456/***",
            ["tok-EN_value"],
        ),
        ("http://[::1]:9000/in?auth=abc", "http://[::1]:9000/in?auth=***", ["abc"]),
        ("http://h.example:99999999/", "***", []),
    ],
)
def test_mask_url_and_credentials(url: str, shown: str, secrets: list[str]) -> None:
    assert mask_url(url) == shown
    assert url_credentials(url) == secrets
    for secret in secrets:
        assert secret not in mask_url(url)


async def test_admin_api_and_dashboard_never_show_url_credentials(start_server, make_sink) -> None:
    sink = await make_sink()
    token = "adm-" + "0123456789abcdef"
    secret_url = sink.url.replace("http://", "http://hookuser:hookpass@") + "?token=sekrit-query"
    srv = await start_server(
        {
            "admin": {"enabled": True, "token": token},
            "handlers": [{"id": "chat", "action": "run_agent", "agentId": "a", "template": "hi"}],
            "outgoing": [{"id": "s", "url": secret_url, "events": ["message_received"]}],
        }
    )
    auth = {"Authorization": f"Bearer {token}"}
    assert (await srv.post("chat", {"n": 1}))[0] == 202
    await srv.idle()
    shown: list[Any] = []
    async with srv.session.get(f"{srv.base}/admin/api/subscriptions", headers=auth) as resp:
        shown.append(await resp.text())
    async with srv.session.get(f"{srv.base}/admin/api/outgoing", headers=auth) as resp:
        page = await resp.json()
        shown.append(str(page))
    [item] = page["items"]
    async with srv.session.get(f"{srv.base}/admin/api/outgoing/{item['id']}", headers=auth) as resp:
        detail = await resp.json()
        shown.append(str(detail))
    async with srv.session.get(f"{srv.base}/admin/", headers=auth) as resp:
        shown.append(await resp.text())
    async with srv.session.get(f"{srv.base}/admin/deliveries/{item['id']}", headers=auth) as resp:
        shown.append(await resp.text())
    assert detail["url"] == mask_url(secret_url)
    assert "hookuser:***@" in detail["url"] and "token=***" in detail["url"]
    for text in shown:
        assert "hookpass" not in text and "sekrit-query" not in text
    assert len(sink.received) == 1  # the real URL, credentials included, is still the one used

"""The keys of what the HTTP app holds, shared by its handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.web.deadlines import Deadlines
from clawdbot_webhooks.web.outage import StoreOutage
from clawdbot_webhooks.web.ratelimit import Limits


@dataclass(frozen=True, slots=True)
class Ingress:
    """What the webhook endpoint keeps from one request to the next, under one key: each
    key costs a webhook a look-up (a Python call of aiohttp's) every time it is read."""

    limits: Limits
    outage: StoreOutage
    deadlines: Deadlines


RUNTIME = web.AppKey("runtime", Runtime)
INGRESS = web.AppKey("ingress", Ingress)
#: The route webhooks arrive on, which the server takes past the router (``web.dispatch``).
WEBHOOK_ROUTE = web.AppKey("webhook_route", web.AbstractRoute)

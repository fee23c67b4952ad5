"""The keys of what the HTTP app holds, shared by its handlers."""

from __future__ import annotations

from aiohttp import web

from clawdbot_webhooks.runtime import Runtime
from clawdbot_webhooks.web.deadlines import Deadlines
from clawdbot_webhooks.web.outage import StoreOutage
from clawdbot_webhooks.web.ratelimit import Limits

RUNTIME = web.AppKey("runtime", Runtime)
LIMITS = web.AppKey("limits", Limits)
OUTAGE = web.AppKey("outage", StoreOutage)
DEADLINES = web.AppKey("deadlines", Deadlines)
#: The route webhooks arrive on, which the server takes past the router (``web.dispatch``).
WEBHOOK_ROUTE = web.AppKey("webhook_route", web.AbstractRoute)

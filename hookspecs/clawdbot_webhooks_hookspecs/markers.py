from __future__ import annotations

import pluggy

#: The pluggy project name, also the entry-point group plugins are published under.
PROJECT_NAME = "clawdbot_webhooks"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

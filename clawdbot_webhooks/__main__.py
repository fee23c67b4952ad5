from __future__ import annotations

from clawdbot_webhooks.cli import main

main()

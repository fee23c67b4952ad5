"""clawdbot-webhooks: a webhooks subsystem for the Clawdbot AI assistant."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clawdbot-webhooks")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

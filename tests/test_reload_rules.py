"""Which config changes a running server takes at once and which wait for a restart, and the
log masking a reloaded config's new secrets."""

from __future__ import annotations

import logging
from typing import Any

from clawdbot_webhooks.config import Settings, build_settings
from clawdbot_webhooks.logs import Redactor
from clawdbot_webhooks.plugins import load_plugins
from clawdbot_webhooks.reload import merged, restart_needed

PLUGINS = load_plugins()
HANDLER = {
    "id": "h",
    "action": "run_agent",
    "agentId": "main",
    "template": "{{ x }}",
    "verify": {"type": "none"},
}


def settings(**webhooks: Any) -> Settings:
    return build_settings({"stateDir": "/tmp/s", "handlers": [HANDLER], **webhooks}, PLUGINS, None)


def test_live_changes_need_no_restart() -> None:
    old = settings()
    new = settings(
        handlers=[HANDLER, {**HANDLER, "id": "g", "rateLimit": {"requests": 3}}],
        incoming={"secret": "s3cret-value", "concurrency": 4, "trustedProxies": ["10.0.0.1"]},
        sessions={"idleTimeout": 5},
        outgoing=[{"id": "o", "url": "http://127.0.0.1:9/x", "events": ["*"]}],
    )
    assert restart_needed(old, new) == []
    applied = merged(old, new)
    assert [h.handler.id for h in applied.handlers] == ["h", "g"]
    assert applied.incoming.concurrency == 4 and applied.incoming.secret == "s3cret-value"


def test_start_only_keys_are_named_and_kept_as_running() -> None:
    old = settings()
    new = settings(
        incoming={"port": 4000, "basePath": "/in", "eventIngress": {"token": "t"}},
        storage={"url": "sqlite:////tmp/other.sqlite3"},
        gateway={"type": "local"},
        admin={"enabled": True, "token": "a" * 20},
        logging={"level": "debug"},
    )
    assert restart_needed(old, new) == [
        "incoming.port",
        "incoming.basePath",
        "incoming.eventIngress",
        "storage",
        "admin",
        "logging",
    ]
    applied = merged(old, new)
    assert applied.incoming.port == old.incoming.port
    assert applied.incoming.base_path == old.incoming.base_path
    assert applied.incoming.event_ingress is None
    assert (applied.storage, applied.admin, applied.logging) == (
        old.storage,
        old.admin,
        old.logging,
    )


def test_a_reloaded_secret_is_masked_from_then_on() -> None:
    redactor = Redactor({"first-secret"})
    redactor.extend({"second-secret", "first-secret"})
    record = logging.LogRecord(
        "x", logging.INFO, "", 0, "%s and %s", ("first-secret", "second-secret"), None
    )
    assert redactor.filter(record)
    assert record.getMessage() == "*** and ***"

"""A persistent handler's session, rendered from its ``sessionKey`` for one delivery.

The key renders strictly whatever ``strictTemplates`` says: ``ops-{{ alert.team }}`` on a
payload without ``alert.team`` would otherwise be ``ops-`` for every such delivery, one
session shared by deliveries that have nothing in common.
"""

from __future__ import annotations

from clawdbot_webhooks_hookspecs import Delivery

from clawdbot_webhooks.config import HandlerSpec
from clawdbot_webhooks.store.rows import storable
from clawdbot_webhooks.templates import context_for


class SessionKeyError(ValueError):
    """The ``sessionKey`` has no value for this delivery; the message says why."""


def render_session_key(spec: HandlerSpec, delivery: Delivery) -> str:
    """The session key for ``delivery``, or ``SessionKeyError``."""
    assert spec.session_key is not None  # persistent handlers have one (config schema)
    try:
        key = str(spec.session_key.render(context_for(delivery, spec.handler))).strip()
    except Exception as exc:  # a missing value (strict), a filter's error, the sandbox
        raise SessionKeyError(
            f"sessionKey of handler {spec.handler.id!r} has no value for this delivery: {exc}"
        ) from exc
    if not key:
        raise SessionKeyError(
            f"sessionKey of handler {spec.handler.id!r} rendered empty for this delivery"
        )
    return storable(key)  # stored with every row of the session, on either backend

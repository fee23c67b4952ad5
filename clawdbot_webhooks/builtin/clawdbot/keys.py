"""The session a delivery's run gets in Clawdbot, whichever way it is reached (WebSocket or
HTTP hooks)."""

from __future__ import annotations

import re

#: An ephemeral session of ours: ``hook:`` and a version-4 UUID (``sessions.ephemeral_session``).
_EPHEMERAL = re.compile(r"hook:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def hook_session_key(session: str) -> str:
    """The key a session is filed under among an agent's sessions. An ephemeral session
    keeps its ``hook:<uuid>``; a persistent one's key, which may come from a payload, goes
    under ``hooks:``, so that no key (``main``, ``agent:devops:main``, a chat's) can reach
    one of the agent's own sessions."""
    return session if _EPHEMERAL.fullmatch(session) else f"hooks:{session}"

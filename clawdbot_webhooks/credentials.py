"""Credentials inside URLs: found, so logs mask them, and masked wherever a URL is shown.

Many webhook URLs carry their own secret: a password in the userinfo, a query parameter named
like one (``?token=``), or the path itself for Slack's and Discord's incoming webhooks.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

MASK = "***"
#: Query parameters whose value is a credential.
SECRET_PARAM = re.compile(r"token|key|secret|sig|signature|password|passwd|auth|code", re.I)
#: Hosts whose webhook URLs hold the secret in the path: (host, segments kept before it).
SECRET_PATHS = {
    "hooks.slack.com": 3,  # /services/T000/B000/SECRET: team and channel ids kept
    "discord.com": 3,  # /api/webhooks/ID/TOKEN
    "discordapp.com": 3,
}


def _path_secret(host: str, path: str) -> tuple[str, str | None]:
    """``path`` with the secret part masked, and that part (None when there is none)."""
    keep = SECRET_PATHS.get(host)
    if keep is None:
        return path, None
    segments = path.split("/")  # ["", "services", "T000", "B000", "SECRET"]
    if len(segments) <= keep + 1 or not segments[keep + 1]:
        return path, None
    secret = "/".join(segments[keep + 1 :])
    return "/".join([*segments[: keep + 1], MASK]), secret


def url_credentials(url: str) -> list[str]:
    """The credentials a URL holds, so a log filter can mask them wherever they appear."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [v for v in (parts.password, parts.username if not parts.password else None) if v]
    found += [
        v for k, v in parse_qsl(parts.query, keep_blank_values=False) if SECRET_PARAM.search(k)
    ]
    _, secret = _path_secret((parts.hostname or "").lower(), parts.path)
    if secret:
        found.append(secret)
    return found


def mask_url(url: str) -> str:
    """``url`` as it may be shown: userinfo, secret-named query values and secret paths
    replaced by ``***``; the scheme, host, port and the rest stay readable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return MASK  # not parseable: nothing of it can be shown safely
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc += f":{port}"
    if parts.password:
        netloc = f"{quote(parts.username or '', safe='')}:{MASK}@{netloc}"
    elif parts.username:
        netloc = f"{MASK}@{netloc}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*"
            )
    path, _ = _path_secret((parts.hostname or "").lower(), parts.path)
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))

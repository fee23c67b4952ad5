"""Logging for ``serve``: text or one JSON object per line, with every configured secret
redacted.

JSON lines carry ``time``, ``level``, ``logger``, ``message`` and, when the code passed them
with ``extra=``, ``delivery``, ``hook`` and ``subscription``. The redaction filter sits on the
handler, so it sees every record whichever logger (ours, aiohttp's, a plugin's) made it, and
it replaces each secret value from the loaded config with ``***`` in the message, its
arguments, the traceback and the extra fields.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import markupsafe
from aiohttp.http_exceptions import BadHttpMessage, InvalidURLError
from aiohttp.web import RequestPayloadError

from clawdbot_webhooks.config import Settings
from clawdbot_webhooks.credentials import url_credentials
from clawdbot_webhooks.signing import SECRET_PREFIX

MASK = "***"
#: Values shorter than this are not treated as secrets: masking every "a" would garble the
#: log and a secret that short protects nothing anyway.
MIN_SECRET = 4
#: Option names whose values are secrets wherever they appear (gateway, plugins, headers).
SENSITIVE = re.compile(r"secret|token|password|passwd|api[-_]?key|authorization|credential", re.I)
FIELDS = ("delivery", "hook", "subscription")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _sensitive_values(value: Any, sensitive: bool = False) -> Iterator[str]:
    """Strings under sensitive keys, at any depth."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _sensitive_values(inner, sensitive or bool(SENSITIVE.search(str(key))))
    elif isinstance(value, list | tuple | set | frozenset):
        for inner in value:
            yield from _sensitive_values(inner, sensitive)
    elif sensitive and isinstance(value, str):
        yield value


def collect_secrets(settings: Settings) -> set[str]:
    """Every secret value in the loaded settings: the incoming secret, handler secrets and
    verify secrets, secrets in action options, subscription secrets and auth headers, the
    credentials inside subscription, forward and gateway URLs, the gateway's token, the admin
    token, plugin settings' secrets."""
    found: set[str] = set()
    incoming = settings.incoming
    ingress = incoming.event_ingress
    found.update(s for s in (incoming.secret, ingress.token if ingress else None) if s)
    for spec in settings.handlers:
        if spec.secret:
            found.add(spec.secret)
        found.update(_sensitive_values(spec.verify.options if spec.verify else {}))
        found.update(_sensitive_values(spec.handler.options))
        if isinstance(url := spec.handler.options.get("url"), str):
            found.update(url_credentials(url))
    for sub in settings.outgoing:
        if sub.secret:
            found.add(sub.secret)
            # The key alone (the part a whsec_ secret encodes) is just as secret.
            found.add(sub.secret.removeprefix(SECRET_PREFIX))
        found.update(_sensitive_values(sub.headers))
        found.update(url_credentials(sub.url))
    found.update(_sensitive_values(settings.gateway.options))
    if isinstance(url := settings.gateway.options.get("url"), str):
        found.update(url_credentials(url))
    if settings.admin.token:
        found.add(settings.admin.token)
    found.update(_sensitive_values(settings.plugins.settings))
    password = urlsplit(settings.storage.url).password
    if password:
        found.add(password)
    return {s for s in found if len(s) >= MIN_SECRET}


def spellings(secret: str) -> set[str]:
    """A secret as text may show it: as it is; inside a JSON string (quotes, backslashes and
    non-ASCII escaped or not), once or twice (a payload's JSON shown as a string of JSON);
    and any of these in HTML (``&``, ``<``, ``>``, quotes as entities)."""

    def in_json(texts: set[str]) -> set[str]:
        return {json.dumps(t, ensure_ascii=a)[1:-1] for t in texts for a in (True, False)}

    once = in_json({secret})
    written = {secret} | once | in_json(once)
    return written | {str(markupsafe.escape(t)) for t in written}


class Redactor(logging.Filter):
    """Replaces secret values with ``***`` in everything a record will print, and in what the
    admin API and dashboard show (whichever way it is written there: ``spellings``)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self.extend(secrets)

    def extend(self, secrets: Iterable[str]) -> None:
        """Mask these too (a reloaded config's secrets); the ones known stay masked."""
        known = set(self._secrets).union(*(spellings(s) for s in secrets))
        if len(known) != len(self._secrets):
            # Longest first, so a secret containing another is masked whole.
            self._secrets = sorted(known, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, self._secrets)))

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: keep what can be shown, still redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name in FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = self.redact(value)
        return True


class LogThrottle:
    """At most ``burst`` lines per ``interval`` seconds for one kind of per-request message, so
    a flood of bad requests cannot flood the log; the lines held back are counted, and the
    first line let through after the interval says how many there were."""

    def __init__(
        self, burst: int = 10, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.interval, self.clock = burst, interval, clock
        self._window_start = -math.inf
        self._logged = 0
        self.held_back = 0

    def admit(self) -> tuple[bool, int]:
        """Whether to log this line, and how many were held back since the last one logged."""
        now = self.clock()
        if now - self._window_start >= self.interval:
            self._window_start, self._logged = now, 0
        if self._logged >= self.burst:
            self.held_back += 1
            return False, 0
        self._logged += 1
        held, self.held_back = self.held_back, 0
        return True, held


class MalformedRequests(logging.Filter):
    """aiohttp logs every request its parser refuses (bad header bytes, an over-long line, TLS
    spoken to a plain port) as an error with a traceback and the offending bytes. A server
    open to the internet sees these by the hundred, through no fault of its own: each becomes
    one warning line naming the client and what was wrong, without the bytes, and a flood of
    them a few lines a minute with the count of those not logged."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = LogThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, BadHttpMessage):
            # A body that does not decode: answered 400, then aiohttp reads on and fails again.
            exc = exc.__cause__
        if not isinstance(exc, BadHttpMessage):
            return True
        log_it, held_back = self.throttle.admit()
        if not log_it:
            return False
        client = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "refused a malformed HTTP request from %s: %s"
        record.args = (client, _what_was_wrong(exc))
        if held_back:
            record.msg += " (%d more were refused and not logged since the last such line)"
            record.args = (*record.args, held_back)
        record.exc_info, record.exc_text = None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            # The logger let it through as an error; as a warning it may be below its level.
            return logging.getLogger(record.name).isEnabledFor(logging.WARNING)
        return True


def _what_was_wrong(exc: BadHttpMessage) -> str:
    """The parser's complaint, up to where it starts quoting what it got (``b'...'``,
    ``bytearray(...``, a quoted line): never the request's own bytes."""
    if isinstance(exc, InvalidURLError):  # its message is the URL itself
        return "invalid URL"
    first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else ""
    return re.split(r"[:'\"(]", first, maxsplit=1)[0].strip() or type(exc).__name__


def quiet_malformed_requests() -> None:
    """Put ``MalformedRequests`` on aiohttp's server logger, once; each new server starts
    with the whole burst (the logger, and so the filter, is the process's)."""
    server_log = logging.getLogger("aiohttp.server")
    for found in server_log.filters:
        if isinstance(found, MalformedRequests):
            found.throttle = LogThrottle()
            return
    server_log.addFilter(MalformedRequests())


class TextFormatter(logging.Formatter):
    """One line per record: newlines and carriage returns inside the message (a response
    body, a payload's text) are escaped, so a record cannot pass for two, nor forge one. A
    traceback still follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ONE_LINE)


_ONE_LINE = str.maketrans({"\n": "\\n", "\r": "\\r"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(fmt: str, level: str, redactor: Redactor) -> logging.Handler:
    """Send the root logger's records to stderr as text or JSON lines, the secrets
    ``redactor`` knows masked (a reload teaches it new ones: ``Reloader``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler

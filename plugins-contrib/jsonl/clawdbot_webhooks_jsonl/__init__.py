"""The ``jsonl`` transport: outgoing deliveries appended to a JSON-lines file.

A subscription with ``transport: "jsonl"`` and ``url: "file:///var/log/clawdbot/events.jsonl"``
gets one line per delivery attempt that reached the disk::

    {"id": "<delivery id>", "subscription": "...", "method": "POST", "writtenAt": "...",
     "headers": {...}, "body": {...the event payload...}}

Each line is written with a single ``write`` on a file opened ``O_APPEND``, under an exclusive
``flock`` (so other processes appending to the same file never interleave with it), then
``fsync``ed before the delivery counts as done. A failed write is a failed attempt: the outbox
retries it and finally dead-letters it, like an HTTP error. Delivery is at-least-once: a line can
repeat after a crash between the fsync and the outbox recording success, so readers deduplicate
by ``id``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from clawdbot_webhooks_hookspecs import OutgoingRequest, OutgoingResponse, hookimpl, utc_timestamp

__version__ = "0.1.0"
__all__ = ["JsonlTransport", "path_of"]


def path_of(url: str) -> Path:
    """The file a ``file:///absolute/path`` URL names; anything else is a ``ValueError``."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file:// URL: {url!r}")
    path = Path(unquote(parts.path))
    if not path.is_absolute() or path.name == "":
        raise ValueError(f"file:// URL without an absolute file path: {url!r}")
    return path


def _body(raw: bytes) -> Any:
    """The payload as JSON when it is JSON, so the file is easy to query; text otherwise."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if created:
        # The new file's directory entry must be durable too, or a crash can lose the file.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class JsonlTransport:
    """Appends each delivery as one JSON line; see the module documentation."""

    #: The URL schemes this transport accepts; ``check`` refuses a subscription with another.
    schemes = frozenset({"file"})

    def __init__(self) -> None:
        # One writer per file inside this process: the thread pool could otherwise run two
        # writes to the same file at once; flock orders them against other processes.
        self._locks: dict[Path, asyncio.Lock] = {}

    async def send(self, request: OutgoingRequest) -> OutgoingResponse:
        try:
            path = path_of(request.url)
        except ValueError as exc:
            return OutgoingResponse(None, error=str(exc))
        record = {
            "id": request.delivery_id,
            "subscription": request.subscription_id,
            "method": request.method,
            "writtenAt": utc_timestamp(),
            "headers": dict(request.headers),
            "body": _body(request.body),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        lock = self._locks.setdefault(path, asyncio.Lock())
        try:
            async with lock:
                await asyncio.to_thread(_append, path, line.encode())
        except OSError as exc:
            return OutgoingResponse(None, error=f"cannot append to {path}: {exc.strerror or exc}")
        return OutgoingResponse(200)


@hookimpl
def register_transports(register: Callable[[str, Any], None]) -> None:
    register("jsonl", JsonlTransport())

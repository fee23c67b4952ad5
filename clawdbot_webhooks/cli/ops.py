"""``clawdbot-webhooks send-test`` and ``clawdbot-webhooks deliveries list / tail`` (``show``
is ``cli.chain``'s)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import IO, Any

import click

from clawdbot_webhooks import __version__
from clawdbot_webhooks.cli.support import (
    config_option,
    format_time,
    json_option,
    load_or_exit,
    time_option,
    with_store,
)
from clawdbot_webhooks.config import HandlerSpec, Settings
from clawdbot_webhooks.plugins import PluginSet
from clawdbot_webhooks.store import DeliveryQuery, DeliverySummary, Store

KINDS = ("incoming", "outgoing")
#: How often ``deliveries tail`` looks for newly finished deliveries.
TAIL_POLL = 0.5
#: Rows of each kind one look reads, beyond those it reads again.
TAIL_PAGE = 500


# ------------------------------------------------------------------------------ send-test


def default_url(settings: Settings, spec: HandlerSpec) -> str:
    host = settings.incoming.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    base = settings.incoming.base_path.rstrip("/")
    return f"http://{host}:{settings.incoming.port}{base}{spec.handler.path}"


def sample_payload(hook: str) -> bytes:
    """A small JSON body; its ids are fresh so deduplication never swallows a test."""
    token = uuid.uuid4().hex
    return json.dumps(
        {
            "id": f"evt_test_{token}",
            "event_id": f"Ev{token}",
            "type": "test",
            "hook": hook,
            "message": "clawdbot-webhooks send-test",
            "sent_at": int(time.time()),
        }
    ).encode()


@click.command("send-test")
@config_option
@click.argument("hook")
@click.option(
    "--payload",
    type=click.File("rb"),
    default=None,
    help="JSON body from FILE, or - for stdin (default: a small sample).",
)
@click.option("--url", default=None, help="Send here (default: the configured listener).")
@click.option(
    "--content-type",
    default=None,
    help="Of --payload (default: application/json).",
)
@click.option(
    "--signing-key",
    type=click.File("r"),
    default=None,
    help="Private key FILE for schemes only the provider can sign (discord: hex Ed25519 seed; "
    "google-oidc: PEM whose public key is in the configured jwks file).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
def send_test(
    config_path: str | None,
    hook: str,
    payload: IO[bytes] | None,
    url: str | None,
    content_type: str | None,
    signing_key: IO[str] | None,
    timeout: float,
) -> None:
    """POST a signed sample request to HOOK on a running server; print the answer.

    Signs it the way the handler verifies (every built-in scheme, and a plugin's that can
    sign), and shapes the sample as the provider sends it. Exits 0 on a 2xx answer, 1
    otherwise.
    """
    settings, _ = load_or_exit(config_path)
    spec = settings.routes.get(hook.strip("/"))
    if spec is None:
        known = ", ".join(sorted(h.handler.id for h in settings.handlers)) or "none"
        raise click.UsageError(f"no handler {hook!r} (handlers: {known})")
    now = int(time.time())
    verifier: Any = spec.verify.verifier if spec.verify is not None else None
    body, mime = b"", content_type or "application/json"
    sample = getattr(verifier, "sample", None)
    if payload is not None:
        body = payload.read()
    elif sample is not None:
        body, mime = sample(json.loads(sample_payload(spec.handler.id)), now)
    else:
        body = sample_payload(spec.handler.id)
    signed: dict[str, str] = {}
    if spec.verify is not None:
        kind = spec.verify.type
        sign = getattr(verifier, "sign", None)
        if sign is None:
            click.echo(f"Error: send-test cannot sign for verifier {kind!r}", err=True)
            sys.exit(2)
        options = dict(spec.verify.options)
        if signing_key is not None:
            options["signingKey"] = signing_key.read().strip()
        try:
            signed = sign(body, options, now)
        except ValueError as exc:
            hint = "" if signing_key is not None else " (--signing-key FILE)"
            click.echo(f"Error: cannot sign for verifier {kind!r}: {exc}{hint}", err=True)
            sys.exit(2)
    target = url or default_url(settings, spec)
    request = urllib.request.Request(target, data=body, method="POST")
    request.add_header("Content-Type", mime)
    request.add_header("User-Agent", f"clawdbot-webhooks-send-test/{__version__}")
    for name, value in signed.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"Error: could not reach {target}: {getattr(exc, 'reason', exc)}", err=True)
        sys.exit(1)
    click.echo(f"POST {target} -> {status}")
    click.echo(text)
    sys.exit(0 if 200 <= status < 300 else 1)


# ------------------------------------------------------------------------------ deliveries


def _row(s: DeliverySummary) -> dict[str, Any]:
    return {
        "kind": s.kind,
        "id": s.id,
        "target": s.target,
        "status": s.status,
        "attempts": s.attempts,
        "created_at": s.created_at,
        "finished_at": s.finished_at,
        "event_type": s.event_type,
        "error": s.last_error,
    }


def _line(s: DeliverySummary) -> str:
    when = format_time(s.finished_at or s.created_at)
    error = f"  {s.last_error.splitlines()[0][:100]}" if s.last_error else ""
    return f"{when}  {s.kind:8}  {s.id}  {s.target}  {s.status}  attempts={s.attempts}{error}"


@click.group()
def deliveries() -> None:
    """Incoming and outgoing deliveries: list the latest, or follow them live."""


@deliveries.command("list")
@config_option
@json_option
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only one direction.")
@click.option("--status", default=None, help="pending, done, dropped or dead.")
@click.option("--since", metavar="TIME", default=None, callback=time_option)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def list_(
    config_path: str | None,
    as_json: bool,
    kind: str | None,
    status: str | None,
    since: float | None,
    limit: int,
) -> None:
    """The latest deliveries, newest first."""

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> list[DeliverySummary]:
        query = DeliveryQuery(status=status, since=since, limit=limit)
        rows: list[DeliverySummary] = []
        for k in [kind] if kind else KINDS:
            rows += await store.list_deliveries(k, query)
        rows.sort(key=lambda s: s.created_at, reverse=True)
        return rows[:limit]

    rows = with_store(config_path, work, store_only=True)
    if as_json:
        click.echo(json.dumps([_row(s) for s in rows], indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("No deliveries.")
        return
    for s in rows:
        click.echo(_line(s))


class Finished:
    """Deliveries of both kinds as they finish, in the order they finished, each once."""

    def __init__(self, since: float) -> None:
        self.cursor = since
        # Rows finishing in the same instant as the cursor may commit after we looked:
        # each look reads a little behind it and skips what it gave already.
        self._given: dict[tuple[str, float], None] = {}

    async def next(self, store: Store) -> tuple[list[DeliverySummary], bool]:
        """The rows finished since the last look, and whether that was all of them (else
        look again at once)."""
        rows: list[DeliverySummary] = []
        # A full page of one kind may have more after it: nothing finished later than its
        # last row is given yet (the other kind's rows would move the cursor past them).
        # A page holds as many more rows as the look behind the cursor reads again, so a
        # full one always brings new rows.
        limit = TAIL_PAGE + sum(1 for _, at in self._given if at > self.cursor - 1.0)
        bound = math.inf
        for kind in KINDS:
            page = await store.list_deliveries(
                kind, DeliveryQuery(finished_after=self.cursor - 1.0, limit=limit)
            )
            rows += page
            if len(page) == limit:
                bound = min(bound, page[-1].finished_at or self.cursor)
        rows.sort(key=lambda s: (s.finished_at or 0.0, s.id))
        fresh = []
        before = self.cursor
        for s in rows:
            key = (s.id, s.finished_at or 0.0)
            if key in self._given or (s.finished_at or 0.0) > bound:
                continue
            self._given[key] = None
            fresh.append(s)
            self.cursor = max(self.cursor, s.finished_at or self.cursor)
        for key in [k for k in self._given if k[1] < self.cursor - 5.0]:
            del self._given[key]
        return fresh, bound == math.inf or self.cursor == before


@deliveries.command()
@config_option
@json_option
@click.option(
    "--since",
    metavar="TIME",
    default=None,
    callback=time_option,
    help="Also show those finished since TIME (default: only new ones).",
)
def tail(config_path: str | None, as_json: bool, since: float | None) -> None:
    """Follow deliveries as they finish (done, dropped or dead), one line each; Ctrl-C stops."""

    async def work(settings: Settings, plugins: PluginSet, store: Store) -> None:
        follow = Finished(time.time() if since is None else since)
        while True:
            rows, caught_up = await follow.next(store)
            for s in rows:
                click.echo(json.dumps(_row(s), ensure_ascii=False) if as_json else _line(s))
            sys.stdout.flush()
            if caught_up:
                await asyncio.sleep(TAIL_POLL)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it ends
        with_store(config_path, work, store_only=True)

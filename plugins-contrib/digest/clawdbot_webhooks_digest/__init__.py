"""The ``digest`` action: gather deliveries over a window, then send one summary.

Each delivery's rendered ``template`` becomes one line. When ``window`` seconds have passed
since the first line of a batch, or ``maxItems`` lines are waiting, the batch goes out as one
``send_message`` to ``target`` or one ``run_agent`` prompt to ``agentId``.

Lines are kept in a small SQLite file before the delivery counts as done, so a crash loses
nothing: what was gathered is sent when the server next starts. The summary's idempotency key
is derived from the delivery ids it covers, so a summary re-sent after a crash (sent, but not
yet forgotten) is recognised by the gateway and takes effect once.

Where the file lives: the handler's ``directory`` option, else
``webhooks.plugins.settings.digest.directory``, else ``<stateDir>/digest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import (
    ActionContext,
    ActionError,
    Event,
    PluginEnv,
    Template,
    derived_event_id,
    hookimpl,
    wrap_untrusted,
)
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .store import Bucket, DigestStore, Item

__version__ = "0.1.0"
__all__ = ["Digest", "render_summary", "summary_key"]

#: The longest wait between two tries of a summary the gateway refused.
MAX_RETRY_DELAY = 300.0


def summary_key(delivery_ids: Iterable[str]) -> str:
    """The idempotency key of a summary: the same deliveries give the same key, in any order."""
    joined = "\x1f".join(sorted(delivery_ids))
    return "digest_" + hashlib.sha256(joined.encode()).hexdigest()[:32]


def render_summary(title: str, hook: str, items: list[Item]) -> str:
    head = title.format(count=len(items), hook=hook)
    return "\n".join([head, *(f"• {item.text}" for item in items)])


class _Target(Schema):
    channel = fields.String(required=True)
    peer = fields.String(required=True)


class Digest:
    """See the module documentation. One instance per runtime (``register_actions`` makes a
    new one each time the plugins load)."""

    class schema(Schema):
        template = Template(required=True)
        window = fields.Float(load_default=60.0, validate=validate.Range(min=0.01))
        maxItems = fields.Integer(load_default=50, validate=validate.Range(min=1, max=10_000))
        target = fields.Nested(_Target, load_default=None)
        agentId = fields.String(load_default=None)
        title = fields.String(load_default="{count} deliveries to {hook}")
        directory = fields.String(load_default=None)
        allowUnsafeExternalContent = fields.Boolean(load_default=False)

        @validates_schema
        def _one_destination(self, data: Mapping[str, Any], **_: Any) -> None:
            if (data.get("target") is None) == (data.get("agentId") is None):
                raise ValidationError("set exactly one of target or agentId", "target")

        @validates_schema
        def _title_formats(self, data: Mapping[str, Any], **_: Any) -> None:
            try:
                data.get("title", "").format(count=1, hook="h")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValidationError(
                    f"only {{count}} and {{hook}} may be used: {exc}", "title"
                ) from None

    def __init__(self) -> None:
        self._env: PluginEnv | None = None
        self._default: Path | None = None
        self._stores: dict[Path, DigestStore] = {}
        self._timers: dict[tuple[Path, str], asyncio.TimerHandle] = {}
        self._flushing: dict[tuple[Path, str], asyncio.Task[None]] = {}
        self._failures: dict[tuple[Path, str], int] = {}
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self, env: PluginEnv) -> None:
        self._env = env
        configured = env.settings.get("directory")
        self._default = Path(configured) if configured else Path(env.state_dir) / "digest"
        # Only directories that hold a digest already are opened: a runtime that never uses
        # the action creates no file.
        directories = [self._default]
        if (self._default / "digest.sqlite3").exists():
            directories += await self._store(self._default).directories()
        for directory in directories:
            if (directory / "digest.sqlite3").exists():
                await self._resume(self._store(directory))

    async def close(self) -> None:
        # What is gathered stays on disk and goes out at the next start.
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._flushing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for store in self._stores.values():
            await store.close()
        self._stores.clear()

    async def _resume(self, store: DigestStore) -> None:
        for bucket in await store.buckets():
            # After a restart the batch is already late: send it now.
            self._schedule(store, bucket.key, 0.0)

    # ---------------------------------------------------------------- gathering

    def _store(self, directory: Path) -> DigestStore:
        store = self._stores.get(directory)
        if store is None:
            store = self._stores[directory] = DigestStore(directory)
        return store

    async def run(self, ctx: ActionContext) -> Any:
        if self._env is None or self._default is None or self._closed:
            raise ActionError("the digest action is not running (runtime not started)")
        options = ctx.options
        directory = Path(options["directory"]) if options["directory"] else self._default
        store = self._store(directory)
        if directory != self._default:
            await self._store(self._default).remember_directory(directory)
        destination = (
            {"target": dict(options["target"])}
            if options["target"] is not None
            else {"agentId": options["agentId"]}
        )
        key = hashlib.sha256(
            json.dumps([ctx.handler.id, destination], sort_keys=True).encode()
        ).hexdigest()[:24]
        persistent = ctx.handler.session_mode == "persistent"
        spec = {
            **destination,
            "hook": ctx.handler.id,
            "title": options["title"],
            "window": options["window"],
            "maxItems": options["maxItems"],
            "session": ctx.session if persistent else None,
            "allowUnsafeExternalContent": options["allowUnsafeExternalContent"],
        }
        now = time.time()
        # Items are listed in the order their webhooks arrived, not the order their actions
        # happened to run in (they run concurrently).
        item = Item(0, ctx.delivery.id, str(options["template"]), ctx.delivery.received_at)
        count = await store.gather(key, ctx.handler.id, spec, now + options["window"], item)
        if count >= options["maxItems"]:
            self._schedule(store, key, 0.0)
        elif (directory, key) not in self._timers and (directory, key) not in self._flushing:
            self._schedule(store, key, options["window"])
        return {"digest": key, "waiting": count}

    # ---------------------------------------------------------------- sending

    def _schedule(self, store: DigestStore, key: str, delay: float) -> None:
        if self._closed:
            return
        slot = (store.directory, key)
        if slot in self._flushing:
            return  # the running flush looks at the bucket again when it is done
        timer = self._timers.pop(slot, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[slot] = loop.call_later(delay, self._fire, store, key)

    def _fire(self, store: DigestStore, key: str) -> None:
        slot = (store.directory, key)
        self._timers.pop(slot, None)
        task = asyncio.ensure_future(self._flush(store, key))
        self._flushing[slot] = task
        task.add_done_callback(
            lambda done: self._flushing.pop(slot) if self._flushing.get(slot) is done else None
        )

    async def _flush(self, store: DigestStore, key: str) -> None:
        env = self._env
        assert env is not None
        slot = (store.directory, key)
        bucket = next((b for b in await store.buckets() if b.key == key), None)
        if bucket is None:
            return
        items = await store.items(key, int(bucket.spec["maxItems"]))
        window = float(bucket.spec["window"])
        remaining: tuple[float, int] | None
        try:
            if items:
                await self._send(env, bucket, items)
            remaining = await store.sent(key, items, window)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures = self._failures.get(slot, 0) + 1
            self._failures[slot] = failures
            delay = min(MAX_RETRY_DELAY, max(window, 0.05) * 2 ** min(failures - 1, 10))
            env.logger.warning(
                "digest %s for %s: %d items not sent (%r); trying again in %.1fs",
                key,
                bucket.handler,
                len(items),
                exc,
                delay,
            )
            self._flushing.pop(slot, None)
            self._schedule(store, key, delay)
            return
        self._failures.pop(slot, None)
        self._flushing.pop(slot, None)
        if remaining is not None:
            deadline, count = remaining
            due = count >= int(bucket.spec["maxItems"])
            self._schedule(store, key, 0.0 if due else max(0.0, deadline - time.time()))

    async def _send(self, env: PluginEnv, bucket: Bucket, items: list[Item]) -> None:
        spec = bucket.spec
        text = render_summary(spec["title"], spec["hook"], items)
        idempotency_key = summary_key(item.delivery for item in items)
        session = spec.get("session") or f"hook:{idempotency_key}"
        if "target" in spec:
            await env.gateway.send_message(
                channel=spec["target"]["channel"],
                peer=spec["target"]["peer"],
                text=text,
                session=session,
                idempotency_key=idempotency_key,
            )
            env.logger.info("digest %s: sent %d items", bucket.key, len(items))
            return
        # The summary quotes payload text: an agent gets it inside the untrusted-content
        # boundary, as run_agent gives a single delivery's.
        if not spec.get("allowUnsafeExternalContent"):
            text = wrap_untrusted(
                text, {"Source": "webhook digest", "Hook": spec["hook"], "Digest": idempotency_key}
            )
        reply = await env.gateway.run_agent(
            agent_id=spec["agentId"],
            message=text,
            session=session,
            idempotency_key=idempotency_key,
        )
        await env.publish(
            Event(
                "agent_response",
                {"text": reply.text, "agentId": reply.agent_id, "runId": reply.run_id},
                session=session,
                causation=idempotency_key,
                id=derived_event_id(idempotency_key, "agent_response"),
            )
        )


@hookimpl
def register_actions(register: Callable[[str, Any], None]) -> None:
    register("digest", Digest())

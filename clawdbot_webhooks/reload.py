"""Live reload: ``serve`` re-reads its config file when it changes (checked every second) and
at once on SIGHUP, and applies a valid change without restarting.

What applies live: handlers, subscriptions, secrets, limits, templates, sessions' idle
timeout. What needs a restart (logged, the running value kept): the listener (host, port,
base path, body size, shutdown timeout), the dedup window, turning the event ingress on or
off, storage, state directory, gateway, plugins, admin, logging. An
invalid file is refused with its errors logged; the running config stays. Deliveries already
running finish with the handler (or subscription) they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from clawdbot_webhooks.config import (
    ConfigError,
    Settings,
    build_settings,
    read_raw,
)
from clawdbot_webhooks.logs import Redactor, collect_secrets

if TYPE_CHECKING:
    from clawdbot_webhooks.events import EventBus
    from clawdbot_webhooks.metrics import Metrics
    from clawdbot_webhooks.outgoing.outbox import Outbox
    from clawdbot_webhooks.pipeline import Pipeline
    from clawdbot_webhooks.plugins import PluginSet
    from clawdbot_webhooks.sessions import Sessions


class Runtime(Protocol):
    """What a reload changes in the running server (``runtime.Runtime`` has it)."""

    settings: Settings
    plugins: PluginSet
    pipeline: Pipeline
    outbox: Outbox
    bus: EventBus
    sessions: Sessions
    metrics: Metrics
    redactor: Redactor


log = logging.getLogger("clawdbot_webhooks.reload")

#: How often the file is looked at (its size, modification time and inode).
WATCH_SECONDS = 1.0
#: ``incoming`` keys bound when the listener starts: (attribute, config key).
LISTENER_KEYS = (
    ("enabled", "enabled"),
    ("host", "host"),
    ("port", "port"),
    ("base_path", "basePath"),
    ("max_body_bytes", "maxBodyBytes"),
    ("shutdown_timeout", "shutdownTimeout"),
    ("dedup_window", "dedupWindow"),
)
#: Sections that take effect only at start: (attribute, config key).
RESTART_SECTIONS = (
    ("storage", "storage"),
    ("state_dir", "stateDir"),
    ("gateway", "gateway"),
    ("plugins", "plugins"),
    ("admin", "admin"),
    ("logging", "logging"),
)


@dataclasses.dataclass
class ReloadState:
    """What the admin API and /metrics show about reloads."""

    applied: int = 0
    refused: int = 0
    last_at: float | None = None
    last_result: str | None = None  # applied, unchanged or refused
    last_trigger: str | None = None  # file or signal
    errors: list[str] = dataclasses.field(default_factory=list)
    restart_needed: list[str] = dataclasses.field(default_factory=list)

    def view(self, source: str | None) -> dict[str, Any]:
        return {
            "source": source,
            "watching": source is not None,
            "applied": self.applied,
            "refused": self.refused,
            "last": None
            if self.last_at is None
            else {
                "at": self.last_at,
                "result": self.last_result,
                "trigger": self.last_trigger,
                "errors": self.errors,
                "restartNeeded": self.restart_needed,
            },
        }


class ReloadCollector(Collector):
    def __init__(self, state: ReloadState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        reloads = CounterMetricFamily(
            "clawdbot_webhooks_config_reloads",
            "Config reloads by result (applied, refused).",
            labels=["result"],
        )
        reloads.add_metric(["applied"], self.state.applied)
        reloads.add_metric(["refused"], self.state.refused)
        yield reloads
        last = GaugeMetricFamily(
            "clawdbot_webhooks_config_last_reload_timestamp_seconds",
            "When the config was last reloaded (applied or refused); 0: never.",
        )
        last.add_metric([], self.state.last_at or 0.0)
        yield last


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The keys whose change takes effect only at the next start."""
    changed = [
        f"incoming.{key}"
        for attr, key in LISTENER_KEYS
        if getattr(old.incoming, attr) != getattr(new.incoming, attr)
    ]
    if (old.incoming.event_ingress is None) != (new.incoming.event_ingress is None):
        changed.append("incoming.eventIngress")
    changed += [key for attr, key in RESTART_SECTIONS if getattr(old, attr) != getattr(new, attr)]
    return changed


def merged(old: Settings, new: Settings) -> Settings:
    """The new settings with what cannot change live kept as it runs."""
    kept: dict[str, Any] = {attr: getattr(old.incoming, attr) for attr, _ in LISTENER_KEYS}
    if (old.incoming.event_ingress is None) != (new.incoming.event_ingress is None):
        kept["event_ingress"] = old.incoming.event_ingress
    return dataclasses.replace(
        new,
        incoming=dataclasses.replace(new.incoming, **kept),
        **{attr: getattr(old, attr) for attr, _ in RESTART_SECTIONS},
    )


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Reloader:
    """Watches the config file and applies its changes to a running runtime."""

    def __init__(
        self,
        runtime: Runtime,
        on_applied: Callable[[Settings], None] | None = None,
        watch_seconds: float = WATCH_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.path = Path(runtime.settings.source) if runtime.settings.source else None
        self.on_applied = on_applied
        self.watch_seconds = watch_seconds
        self.state = ReloadState()
        self._lock = asyncio.Lock()
        self._seen = _signature(self.path) if self.path else None
        self._task: asyncio.Task[None] | None = None
        self._signal = False
        self._signalled: set[asyncio.Task[ReloadState]] = set()
        runtime.metrics.registry.register(ReloadCollector(self.state))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.path is not None:  # else the built-in defaults: no file to follow
            self._task = loop.create_task(self._watch(), name="config-watch")
        # Taken with or without a file: SIGHUP's default would end the process (a service
        # manager's "reload" sends it).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Not in the main thread (tests), or no signals here: the file watch still works.
            loop.add_signal_handler(signal.SIGHUP, self._on_signal)
            self._signal = True

    async def stop(self) -> None:
        if self._signal:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_signal(self) -> None:
        if self.path is None:
            log.info("SIGHUP: no config file to reload (the built-in defaults are in use)")
            return
        log.info("SIGHUP: reloading %s", self.path)
        # Held until done: the loop keeps only a weak reference to a task.
        task = asyncio.get_running_loop().create_task(self.reload("signal"))
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    async def _watch(self) -> None:
        assert self.path is not None
        while True:
            await asyncio.sleep(self.watch_seconds)
            seen = _signature(self.path)
            if seen is not None and seen != self._seen:
                # An editor may still be writing: act once the file has stood still a moment.
                await asyncio.sleep(min(0.2, self.watch_seconds))
                if _signature(self.path) != seen:
                    continue
                await self.reload("file")

    async def reload(self, trigger: str) -> ReloadState:
        """Read the file again and apply it, or refuse it; one reload at a time."""
        async with self._lock:
            assert self.path is not None
            self._seen = _signature(self.path)
            try:
                self._apply(trigger)
            except Exception as exc:  # never let a reload take the server down
                log.exception("config reload failed")
                self._record(trigger, "refused", [repr(exc)], [])
            return self.state

    def _apply(self, trigger: str) -> None:
        assert self.path is not None
        rt = self.runtime
        old = rt.settings
        try:
            raw = read_raw(self.path)
            new = build_settings(raw, rt.plugins, str(self.path))
        except ConfigError as exc:
            for line in exc.errors:
                log.error("config reload refused: %s", line)
            log.error("config reload refused (%s): the running config stays", self.path)
            self._record(trigger, "refused", list(exc.errors), [])
            return
        restart = restart_needed(old, new)
        applied = merged(old, new)
        if restart:
            log.warning(
                "config reload: %s changed; this takes a restart (the running value stays)",
                ", ".join(restart),
            )
        self._install(applied)
        handlers = ", ".join(sorted(h.handler.id for h in applied.handlers)) or "none"
        log.info(
            "config reloaded from %s (%s): handlers: %s; outgoing: %d",
            self.path,
            trigger,
            handlers,
            len(applied.outgoing),
        )
        self._record(trigger, "applied", [], restart)

    def _install(self, settings: Settings) -> None:
        rt = self.runtime
        # New secrets are masked (in the log, the admin API and the dashboard) before
        # anything can print them.
        rt.redactor.extend(collect_secrets(settings))
        rt.settings = settings
        rt.pipeline.update(settings)
        rt.outbox.update(settings.outgoing)
        rt.bus.interest_changed()
        rt.sessions.set_idle_timeout(settings.sessions.idle_timeout)
        if self.on_applied is not None:
            self.on_applied(settings)

    def _record(self, trigger: str, result: str, errors: list[str], restart: list[str]) -> None:
        state = self.state
        if result == "applied":
            state.applied += 1
        else:
            state.refused += 1
        state.last_at = time.time()
        state.last_result = result
        state.last_trigger = trigger
        state.errors = errors
        state.restart_needed = restart

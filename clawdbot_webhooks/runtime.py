"""The runtime: config, plugins, store, gateway, event bus and pipeline, started and stopped
together. The HTTP server and the CLI both work through it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from clawdbot_webhooks_hookspecs import Event, Gateway, GatewayEnv

from clawdbot_webhooks.config import Settings
from clawdbot_webhooks.events import EventBus
from clawdbot_webhooks.logs import Redactor, collect_secrets
from clawdbot_webhooks.metrics import GatewayHealth, Metrics
from clawdbot_webhooks.outgoing.breaker import Breakers
from clawdbot_webhooks.outgoing.outbox import Outbox
from clawdbot_webhooks.pipeline import Pipeline
from clawdbot_webhooks.plugins import PluginSet
from clawdbot_webhooks.plugins.lifecycle import close_objects, start_objects
from clawdbot_webhooks.sessions import Sessions
from clawdbot_webhooks.store import Store, open_store
from clawdbot_webhooks.store.maintenance import forget_forever, renew_forever, retain_forever

if TYPE_CHECKING:
    from clawdbot_webhooks.reload import Reloader

log = logging.getLogger(__name__)


def make_gateway(settings: Settings, plugins: PluginSet, emit: Callable[[Event], None]) -> Gateway:
    """The configured gateway, built by the factory its plugin registered."""
    factory = plugins.registries.gateways[settings.gateway.type]
    env = GatewayEnv(
        state_dir=str(settings.state_dir),
        emit=emit,
        logger=logging.getLogger("clawdbot_webhooks.gateway"),
    )
    gateway: Gateway = factory(dict(settings.gateway.options), env)
    return gateway


@dataclass
class Drain:
    """What stopping did: the deliveries that reached an outcome (done, dropped, dead) while
    it ran, and those it left stored for the next start (an action or attempt that did not
    finish in time, an incoming one whose attempt failed meanwhile and waits for its retry)."""

    finished_incoming: int = 0
    finished_outgoing: int = 0
    left_incoming: int = 0
    left_outgoing: int = 0


class Runtime:
    """Every part is made here, each given what it uses; ``start`` opens and starts them
    (the HTTP client, which needs a running loop, is the one part made there)."""

    def __init__(
        self, settings: Settings, plugins: PluginSet, redactor: Redactor | None = None
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        #: What the admin API and dashboard mask (and the log, given the log's: ``serve``):
        #: every secret of the config, and of every config reloaded since (``Reloader``).
        self.redactor = redactor or Redactor(collect_secrets(settings))
        self.bus = EventBus(plugins.pm)
        self.store: Store = open_store(
            settings.storage.url,
            settings.storage.synchronous,
            schema=settings.storage.schema,
            pool_size=settings.storage.pool_size,
        )
        self.sessions = Sessions(self.bus, settings.sessions.idle_timeout)
        self.gateway: Gateway = make_gateway(settings, plugins, self.bus.emitter("gateway"))
        self.gateway_health = GatewayHealth(self.gateway)
        self.breakers = Breakers(settings.outgoing)
        self.metrics = Metrics(
            gateway_type=settings.gateway.type,
            gateway_health=self.gateway_health,
            queue_counts=self.store.queue_counts,
            breaker_states=self.breakers.states,
        )
        self.outbox = Outbox(
            settings.outgoing,
            self.store,
            self.bus,
            plugins.registries.transports,
            lease=settings.storage.lease_seconds,
            breakers=self.breakers,
            on_attempt=self._attempted,
        )
        # Every event published is stored, subscribed or not: the outbox wants them all (an
        # ephemeral session's two are published only when it ``sends`` them: ``Sessions``).
        self.bus.subscribe(self.outbox.record, sends=self.outbox.sends)
        self.pipeline = Pipeline(
            settings,
            plugins.pm,
            self.store,
            self.gateway,
            self.bus,
            self.sessions,
            on_action=self._acted,
            on_policy_match=self.metrics.content_policy_match,
        )
        self._upkeep: list[asyncio.Task[None]] = []
        self.http: aiohttp.ClientSession | None = None
        self.accepting = False
        #: Counted from the start of a shutdown (``begin_drain``) to its end.
        self.drain: Drain | None = None
        #: Set by the server: follows the config file (``reload.Reloader``).
        self.reloader: Reloader | None = None

    async def start(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        if self.store.single_process:
            # SQLite belongs to one process: whatever a killed predecessor claimed is ours now.
            # (A shared store leaves other processes' leases alone; a dead one's expire.)
            await self.store.release_leases()
        self.outbox.start()
        self.http = aiohttp.ClientSession()
        await self.gateway.start()
        # Plugin objects that keep state (a digest's timers, a file) start before any delivery.
        await start_objects(
            self.plugins.registries,
            settings=self.settings.plugins.settings,
            state_dir=str(self.settings.state_dir),
            gateway=self.gateway,
            http=self.http,
            publish=self.bus.publisher("plugin"),
        )
        self.pipeline.start(self.http)
        self._upkeep = [
            asyncio.create_task(
                renew_forever(self.store, self._held, self.settings.storage.lease_seconds),
                name="lease-heartbeat",
            )
        ]
        retention = self.settings.storage.retention.delivered
        if retention > 0:
            self._upkeep.append(
                asyncio.create_task(
                    retain_forever(self.store, retention),
                    name="retention",
                )
            )
        window = self.settings.incoming.dedup_window
        if window > 0:
            self._upkeep.append(
                asyncio.create_task(forget_forever(self.store, window), name="dedup-window")
            )
        self.accepting = True

    def _held(self) -> tuple[list[str], list[str]]:
        return self.pipeline.held_ids(), self.outbox.held_ids()

    def _acted(self, hook: str, outcome: str, seconds: float) -> None:
        self.metrics.action(hook, outcome, seconds)
        if self.drain is not None:
            if outcome == "retry":
                self.drain.left_incoming += 1
            else:
                self.drain.finished_incoming += 1

    def _attempted(self, subscription: str, outcome: str, seconds: float) -> None:
        self.metrics.outgoing_attempt(subscription, outcome, seconds)
        # A row waiting for its retry stays held: ``Outbox.stop`` counts it as left.
        if self.drain is not None and outcome != "retry":
            self.drain.finished_outgoing += 1

    def begin_drain(self) -> None:
        """Shutting down: no new webhooks; what is in flight gets ``shutdownTimeout``."""
        self.accepting = False
        self.drain = Drain()
        log.info(
            "stopping: no new webhooks; %d incoming and %d outgoing deliveries in flight "
            "get up to %gs to finish",
            len(self.pipeline.held_ids()),
            len(self.outbox.held_ids()),
            self.settings.incoming.shutdown_timeout,
        )

    async def stop(self) -> None:
        self.accepting = False
        drain = self.drain = self.drain or Drain()
        drain.left_incoming += await self.pipeline.stop(self.settings.incoming.shutdown_timeout)
        await close_objects(self.plugins.registries, ("actions",))
        await self.bus.drain(timeout=5)
        # After the pipeline (whose last events it stores), before transports and store close.
        drain.left_outgoing += await self.outbox.stop(self.settings.incoming.shutdown_timeout)
        self.sessions.close()
        for task in self._upkeep:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.gateway.close()
        await close_objects(self.plugins.registries, ("transports",))
        if self.http is not None:
            await self.http.close()
        await self.store.close()
        self.drain = None
        log.info(
            "stopped: %d deliveries finished while stopping (incoming %d, outgoing %d); left "
            "stored for the next start: incoming %d, outgoing %d",
            drain.finished_incoming + drain.finished_outgoing,
            drain.finished_incoming,
            drain.finished_outgoing,
            drain.left_incoming,
            drain.left_outgoing,
        )

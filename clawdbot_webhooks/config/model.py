"""The loaded config: frozen dataclasses, one per section, with snake_case attributes.

Each section's attribute is its config key in snake_case (``basePath`` -> ``base_path``); the
schema builds the dataclass from its loaded fields, so an option is one schema field plus one
attribute here. Defaults live in the schema only.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs import Action, Handler
from jinja2 import Template

from clawdbot_webhooks.retry import RetryPolicy
from clawdbot_webhooks.templates import is_trusted, reads_of

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Request headers never stored with a delivery: they carry credentials.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``requests`` per ``per`` seconds, bursts of up to ``burst``."""

    requests: int
    per: float = 1.0
    burst: int | None = None


@dataclass(frozen=True)
class AuthFailures:
    """After ``max`` failed authentications within ``window`` seconds an address gets 429."""

    max: int
    window: float


@dataclass(frozen=True)
class EventIngress:
    token: str = field(repr=False)


@dataclass(frozen=True)
class IncomingSettings:
    enabled: bool
    host: str
    port: int
    base_path: str
    secret: str | None = field(repr=False)
    secret_header: str
    allowed_ips: tuple[IPNetwork, ...] | None
    trusted_proxies: tuple[IPNetwork, ...]
    max_body_bytes: int
    concurrency: int
    shutdown_timeout: float
    retry: RetryPolicy
    dedup_window: float
    read_timeout: float
    max_json_depth: int
    store_timeout: float
    rate_limit_per_ip: RateLimit | None
    auth_failures: AuthFailures | None
    event_ingress: EventIngress | None
    #: ``{mode, patterns}`` as loaded (None: the built-in default, mode log, every class).
    content_policy: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AdminSettings:
    enabled: bool
    token: str | None = field(repr=False)
    host: str
    #: None: served by the webhook listener.
    port: int | None


@dataclass(frozen=True)
class LoggingSettings:
    format: str
    level: str


@dataclass(frozen=True)
class RetentionSettings:
    #: Seconds a finished delivery is kept; 0 keeps it.
    delivered: float


@dataclass(frozen=True)
class StorageSettings:
    #: ``sqlite:///PATH`` or ``postgresql://...``; resolved against the config file's folder
    #: once loaded (empty only while loading: the default database in the state directory).
    url: str
    synchronous: str
    lease_seconds: float
    retention: RetentionSettings
    schema: str | None
    pool_size: int


@dataclass(frozen=True)
class SessionsSettings:
    idle_timeout: float


@dataclass(frozen=True)
class PluginSettings:
    disabled: tuple[str, ...]
    enabled: tuple[str, ...] | None
    #: Per plugin, its own settings: what they hold is that plugin's schema's business.
    settings: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class GatewaySettings:
    type: str
    #: The gateway plugin's options, loaded by its own schema, so they stay a mapping.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class VerifySpec:
    """A handler's authentication: a verifier and the options its own schema loaded (a
    mapping, as the verifier plugin defines them; they hold secrets: never log them)."""

    type: str
    options: Mapping[str, Any] = field(repr=False)
    #: The registered verifier itself, for its optional ``handshake`` and ``present``.
    verifier: Any = field(default=None, repr=False, compare=False)

    # Looked up once: a verifier without them (most) would raise and catch an AttributeError
    # on every request.
    @functools.cached_property
    def handshake(self) -> Callable[[Any, Mapping[str, Any]], Any] | None:
        """The verifier's ``handshake``, when it has one."""
        return getattr(self.verifier, "handshake", None)

    @functools.cached_property
    def present(self) -> Callable[[Any, Mapping[str, Any]], Any] | None:
        """The verifier's ``present``, when it has one."""
        return getattr(self.verifier, "present", None)


@dataclass(frozen=True)
class HandlerSpec:
    """A handler ready to run: the plugin-visible ``Handler`` plus what the runtime needs."""

    handler: Handler
    action: Action
    templates: Mapping[tuple[str, ...], Template]  # option path -> compiled template
    session_key: Template | None
    secret: str | None = field(repr=False)
    #: Lower-case request headers never stored with a delivery: they carry this handler's
    #: credential (worked out once here, not per request).
    credential_headers: frozenset[str]
    verify: VerifySpec | None
    retry: RetryPolicy
    sync_timeout: float
    rate_limit: RateLimit | None = None
    max_concurrent: int | None = None
    max_pending: int | None = None
    #: The content policy for text bound for an agent (``content_policy.ContentPolicy``).
    screen: Any = None

    @functools.cached_property
    def sender(self) -> str:
        """What its verifier vouches for, shown inside the untrusted-content boundary."""
        if self.verify is None or self.verify.type == "none":
            return "not verified (public endpoint)"
        return f"verified by {self.verify.type}"

    def presented(self, payload: Any) -> Any:
        """The payload as templates and actions see it: the verifier's ``present`` applied."""
        verify = self.verify
        if verify is None or verify.present is None:
            return payload
        return verify.present(payload, verify.options)

    @functools.cached_property
    def reads(self) -> frozenset[str] | None:
        """The context's names its templates read (``context_for``); the trusted
        ``instructions`` get a context of their own."""
        return reads_of(t for path, t in self.templates.items() if not is_trusted(path))

    @functools.cached_property
    def persistent(self) -> bool:
        return self.handler.session_mode == "persistent"

    @functools.cached_property
    def logger(self) -> logging.Logger:
        """The logger its action gets (``clawdbot_webhooks.action.<name>``)."""
        return logging.getLogger(f"clawdbot_webhooks.action.{self.handler.action}")


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    events: frozenset[str]
    method: str
    headers: Mapping[str, str]
    secret: str | None = field(repr=False)
    retry: RetryPolicy
    timeout: float
    transport: str
    template: Template | None
    concurrency: int
    retry_on_4xx: bool
    breaker_threshold: int = 10
    breaker_cooldown: float = 30.0

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


@dataclass(frozen=True)
class Settings:
    """The whole validated ``webhooks`` section."""

    incoming: IncomingSettings
    handlers: tuple[HandlerSpec, ...]
    outgoing: tuple[Subscription, ...]
    gateway: GatewaySettings
    storage: StorageSettings
    plugins: PluginSettings
    sessions: SessionsSettings
    admin: AdminSettings
    logging: LoggingSettings
    state_dir: Path
    strict_templates: bool
    source: str | None = None
    #: Route (handler id, and its path without the leading slash) -> handler.
    routes: Mapping[str, HandlerSpec] = field(default_factory=dict)

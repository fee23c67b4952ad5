"""Loading and validating the ``webhooks`` section of a JSON5 config file.

Three passes, all of whose errors are gathered before anything is reported: the shape of the
file (marshmallow schemas below), each handler's action options (the action's own schema), and
template compilation. Every error names its key path, e.g.
``webhooks.handlers[2].agentId: Missing data for required field.``
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5
from clawdbot_webhooks_hookspecs import EVENT_TYPES, Handler, Template
from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from clawdbot_webhooks.plugins import PluginSelection, PluginSet, load_plugins
from clawdbot_webhooks.retry import BACKOFF_KINDS, RetryPolicy
from clawdbot_webhooks.signing import decode_secret
from clawdbot_webhooks.templates import TemplateError, compile_template, make_environment
from clawdbot_webhooks.web.requests import CREDENTIAL_HEADERS

CONFIG_ENV = "CLAWDBOT_WEBHOOKS_CONFIG"
DEFAULT_PATHS = ("~/.clawdbot/clawdbot.json", "~/.openclaw/openclaw.json")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """One or more config problems, each ``key.path: message``."""

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------------- schemas


class CIDR(fields.String):
    """An IP address or network (v4 or v6)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ValidationError(f"not an IP address or network: {text!r}") from exc


class Strict(Schema):
    class Meta:
        unknown = RAISE


class RetrySchema(Strict):
    maxAttempts = fields.Integer(load_default=5, validate=validate.Range(min=1, max=1000))
    backoff = fields.String(load_default="exponential", validate=validate.OneOf(BACKOFF_KINDS))
    initialDelay = fields.Float(load_default=1.0, validate=validate.Range(min=0))
    maxDelay = fields.Float(load_default=3600.0, validate=validate.Range(min=0))
    jitter = fields.Boolean(load_default=True)


class RateLimitSchema(Strict):
    """A token bucket: ``requests`` per ``per`` seconds, bursts of up to ``burst``."""

    requests = fields.Integer(required=True, validate=validate.Range(min=1))
    per = fields.Float(load_default=1.0, validate=validate.Range(min=0.001))
    burst = fields.Integer(load_default=None, validate=validate.Range(min=1))


class AuthFailuresSchema(Strict):
    """After ``max`` failed authentications within ``window`` seconds an address gets 429."""

    max = fields.Integer(load_default=20, validate=validate.Range(min=1))
    window = fields.Float(load_default=60.0, validate=validate.Range(min=0.001))


class EventIngressSchema(Strict):
    """``POST /events/ingest`` for the Clawdbot event-bridge plugin, with a bearer token."""

    token = fields.String(required=True, validate=validate.Length(min=1))


class IncomingSchema(Strict):
    enabled = fields.Boolean(load_default=True)
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=3011, validate=validate.Range(min=0, max=65535))
    basePath = fields.String(load_default="/webhook", validate=validate.Regexp(r"^(/[^/?#]+)*$"))
    # An empty secret (say, from an empty environment variable) must not mean "no auth".
    secret = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    secretHeader = fields.String(load_default="X-Webhook-Secret")
    allowedIPs = fields.List(CIDR(), load_default=None, allow_none=True)
    trustedProxies = fields.List(CIDR(), load_default=list)
    maxBodyBytes = fields.Integer(load_default=1_048_576, validate=validate.Range(min=1))
    concurrency = fields.Integer(load_default=16, validate=validate.Range(min=1, max=10_000))
    shutdownTimeout = fields.Float(load_default=10.0, validate=validate.Range(min=0))
    retry = fields.Nested(RetrySchema, load_default=dict)
    dedupWindow = fields.Float(load_default=7 * 86_400.0, validate=validate.Range(min=0))
    readTimeout = fields.Float(load_default=30.0, validate=validate.Range(min=0.001))
    maxJsonDepth = fields.Integer(load_default=64, validate=validate.Range(min=1, max=500))
    rateLimitPerIP = fields.Nested(RateLimitSchema, load_default=None, allow_none=True)
    authFailures = fields.Nested(AuthFailuresSchema, load_default=dict, allow_none=True)
    eventIngress = fields.Nested(EventIngressSchema, load_default=None, allow_none=True)


class AdminSchema(Strict):
    """The admin API and dashboard under ``/admin``: off unless enabled, with its own bearer
    token; without ``port`` it is served by the webhook listener, with one on its own."""

    enabled = fields.Boolean(load_default=False)
    token = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=16))
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(0, 65535))


class LoggingSchema(Strict):
    format = fields.String(load_default="text", validate=validate.OneOf(["text", "json"]))
    level = fields.String(
        load_default="info", validate=validate.OneOf(["debug", "info", "warning", "error"])
    )


class VerifySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # the verifier's own schema checks the rest

    type = fields.String(required=True)


class HandlerSchema(Schema):
    """The keys every handler has; everything else belongs to its action's schema."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9._~-]+$"))
    path = fields.String(load_default=None, validate=validate.Regexp(r"^/?[A-Za-z0-9._~/-]+$"))
    action = fields.String(required=True)
    enabled = fields.Boolean(load_default=True)
    sessionMode = fields.String(
        load_default="ephemeral", validate=validate.OneOf(["ephemeral", "persistent"])
    )
    sessionKey = fields.String(load_default=None)
    secret = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    secretHeader = fields.String(load_default=None)
    verify = fields.Nested(VerifySchema, load_default=None)
    mode = fields.String(load_default="async", validate=validate.OneOf(["async", "sync"]))
    syncTimeout = fields.Float(load_default=30.0, validate=validate.Range(min=0))
    retry = fields.Nested(RetrySchema, load_default=None)
    rateLimit = fields.Nested(RateLimitSchema, load_default=None, allow_none=True)
    maxConcurrent = fields.Integer(load_default=None, validate=validate.Range(min=1))
    maxPending = fields.Integer(load_default=None, validate=validate.Range(min=1))

    @validates_schema
    def _persistent_needs_key(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("sessionMode") == "persistent" and not data.get("sessionKey"):
            raise ValidationError("required when sessionMode is 'persistent'", "sessionKey")


class BreakerSchema(Strict):
    """Per-endpoint circuit breaker: after ``threshold`` consecutive failed attempts the
    endpoint is paused for ``cooldown`` seconds, then one probe delivery decides."""

    threshold = fields.Integer(load_default=10, validate=validate.Range(min=1))
    cooldown = fields.Float(load_default=30.0, validate=validate.Range(min=0))


class SubscriptionSchema(Strict):
    id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9._~-]+$"))
    # Checked against the transport below: http(s) for "http", what a plugin transport's
    # ``schemes`` names otherwise (``file`` for jsonl).
    url = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9+.-]*:"))
    events = fields.List(
        fields.String(validate=validate.OneOf([*EVENT_TYPES, "*"])),
        required=True,
        validate=validate.Length(min=1),
    )
    method = fields.String(load_default="POST", validate=validate.OneOf(["POST", "PUT", "PATCH"]))
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    secret = fields.String(load_default=None, allow_none=True)
    retry = fields.Nested(RetrySchema, load_default=dict)
    timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.001))
    transport = fields.String(load_default="http")
    template = fields.String(load_default=None)
    enabled = fields.Boolean(load_default=True)
    concurrency = fields.Integer(load_default=8, validate=validate.Range(min=1, max=1000))
    retryOn4xx = fields.Boolean(load_default=False)
    circuitBreaker = fields.Nested(BreakerSchema, load_default=dict)

    @validates_schema
    def _http_url(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("transport", "http") == "http" and "url" in data:
            try:
                validate.URL(schemes={"http", "https"}, require_tld=False)(data["url"])
            except ValidationError as exc:
                raise ValidationError(exc.messages, "url") from None

    @validates_schema
    def _secret_decodes(self, data: dict[str, Any], **kwargs: Any) -> None:
        secret = data.get("secret")
        if isinstance(secret, str):
            try:
                decode_secret(secret)
            except ValueError as exc:  # the message names no part of the secret
                raise ValidationError(str(exc), "secret") from None


class Age(fields.Field[float]):
    """Seconds, given as a number or as ``"90m"`` / ``"12h"`` / ``"7d"``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return parse_age(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc


class RetentionSchema(Strict):
    #: Finished deliveries (incoming done/dropped, outgoing done) are deleted after this
    #: long; 0 keeps them. Dead letters stay until purged.
    delivered = Age(load_default=7 * 86400.0)


class StorageSchema(Strict):
    url = fields.String(load_default=None)
    synchronous = fields.String(
        load_default="NORMAL", validate=validate.OneOf(["OFF", "NORMAL", "FULL", "EXTRA"])
    )
    #: How long a claimed delivery stays this process's before another may take it over; a
    #: heartbeat renews it while the work runs. Shorter = quicker takeover after a crash.
    leaseSeconds = fields.Float(load_default=30.0, validate=validate.Range(min=0.2))
    retention = fields.Nested(RetentionSchema, load_default=lambda: RetentionSchema().load({}))
    #: PostgreSQL: the schema the tables live in (created when missing); default: the URL's.
    schema = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Za-z_]\w{0,62}$"))
    #: PostgreSQL: connections this process keeps at most.
    poolSize = fields.Integer(load_default=10, validate=validate.Range(min=1, max=200))


def parse_age(value: Any) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value))
        if match is None:
            raise ValueError(f"{value!r}: expected seconds or a duration like 7d")
        unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        seconds = float(match.group(1)) * unit
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


class PluginsSchema(Strict):
    disabled = fields.List(fields.String(), load_default=list)
    enabled = fields.List(fields.String(), load_default=None)
    settings = fields.Dict(keys=fields.String(), values=fields.Dict(), load_default=dict)


class SessionsSchema(Strict):
    idleTimeout = fields.Float(load_default=1800.0, validate=validate.Range(min=0))


class TopSchema(Strict):
    """The scalar top-level keys; each section is loaded by its own schema below."""

    incoming = fields.Raw()
    handlers = fields.List(fields.Raw(), load_default=list)
    outgoing = fields.List(fields.Raw(), load_default=list)
    gateway = fields.Dict(load_default=dict)
    storage = fields.Raw()
    plugins = fields.Raw()
    sessions = fields.Raw()
    admin = fields.Raw()
    logging = fields.Raw()
    strictTemplates = fields.Boolean(load_default=False)
    stateDir = fields.String(load_default=None)


# Sections loaded one by one, so a mistake in one does not hide the mistakes in the others.
SECTIONS: dict[str, type[Schema]] = {
    "incoming": IncomingSchema,
    "storage": StorageSchema,
    "plugins": PluginsSchema,
    "sessions": SessionsSchema,
    "admin": AdminSchema,
    "logging": LoggingSchema,
}


# ---------------------------------------------------------------------------- loaded shapes


@dataclass(frozen=True)
class HandlerSpec:
    """A handler ready to run: the plugin-visible ``Handler`` plus what the runtime needs."""

    handler: Handler
    action: Any
    templates: dict[tuple[str, ...], Any]  # option path -> compiled template
    session_key: Any | None
    secret: str | None = field(repr=False)
    #: Lower-case request headers never stored with a delivery: they carry this handler's
    #: credential (worked out once here, not per request).
    credential_headers: frozenset[str]
    #: The verifier's name under ``type`` plus its loaded options (secrets: never log this).
    verify: dict[str, Any] | None = field(repr=False)
    retry: RetryPolicy
    sync_timeout: float
    rate_limit: dict[str, Any] | None = None
    max_concurrent: int | None = None
    max_pending: int | None = None

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
    headers: dict[str, str]
    secret: str | None
    retry: RetryPolicy
    timeout: float
    transport: str
    template: Any | None
    concurrency: int
    retry_on_4xx: bool
    breaker_threshold: int = 10
    breaker_cooldown: float = 30.0

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


@dataclass
class Settings:
    """The whole validated ``webhooks`` section."""

    incoming: dict[str, Any]
    handlers: list[HandlerSpec]
    outgoing: list[Subscription]
    gateway: dict[str, Any]
    storage_url: str
    synchronous: str
    state_dir: Path
    idle_timeout: float
    strict_templates: bool
    plugin_settings: dict[str, dict[str, Any]]
    source: str | None = None
    routes: dict[str, HandlerSpec] = field(default_factory=dict)
    admin: dict[str, Any] = field(default_factory=lambda: AdminSchema().load({}))
    logging: dict[str, Any] = field(default_factory=lambda: LoggingSchema().load({}))
    #: Storage: lease length, retention of finished deliveries (0 = keep), PostgreSQL options.
    lease_seconds: float = 30.0
    retention_delivered: float = 7 * 86400.0
    storage_schema: str | None = None
    pool_size: int = 10


# ----------------------------------------------------------------------------------- loading


def find_config(explicit: str | None) -> Path | None:
    """The config file: ``--config``, then ``$CLAWDBOT_WEBHOOKS_CONFIG``, then the defaults."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    for candidate in DEFAULT_PATHS:
        path = Path(candidate).expanduser()
        if path.exists():
            return path
    return None


def read_raw(path: Path | None) -> dict[str, Any]:
    """The ``webhooks`` object of a JSON5 file, with ``${VAR}`` substituted."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from exc
    try:
        # Plain JSON is valid JSON5 and the C parser reads it a hundred times faster than
        # the json5 library, which matters for generated configs with thousands of handlers.
        document = json.loads(text)
    except ValueError:
        try:
            document = json5.loads(text)
        except ValueError as exc:
            raise ConfigError([f"{path}: not valid JSON5: {exc}"]) from exc
    if not isinstance(document, dict):
        raise ConfigError([f"{path}: the top level must be an object"])
    section = document.get("webhooks")
    if section is None:
        raise ConfigError(["webhooks: missing (only the 'webhooks' key of the file is read)"])
    if not isinstance(section, dict):
        raise ConfigError(["webhooks: must be an object"])
    errors: list[str] = []
    substituted: dict[str, Any] = _substitute(section, "webhooks", errors)
    if errors:
        raise ConfigError(errors)
    return substituted


def _substitute(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in os.environ:
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return os.environ[name]

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}", errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def flatten_errors(messages: Any, prefix: str) -> Iterator[str]:
    """marshmallow's nested error dict as ``key.path: message`` lines."""
    if isinstance(messages, dict):
        for key, inner in messages.items():
            if key == "_schema":
                yield from flatten_errors(inner, prefix)
            elif isinstance(key, int):
                yield from flatten_errors(inner, f"{prefix}[{key}]")
            else:
                yield from flatten_errors(inner, f"{prefix}.{key}")
    elif isinstance(messages, list):
        for item in messages:
            yield from flatten_errors(item, prefix)
    else:
        yield f"{prefix}: {messages}"


def plugin_selection(raw: Mapping[str, Any]) -> PluginSelection:
    """Read just the plugin switches, before the plugins the rest of the config needs load."""
    section = raw.get("plugins") or {}
    disabled = section.get("disabled") or [] if isinstance(section, dict) else []
    enabled = section.get("enabled") if isinstance(section, dict) else None
    return PluginSelection.from_config(
        [str(n) for n in disabled] if isinstance(disabled, list) else [],
        [str(n) for n in enabled] if isinstance(enabled, list) else None,
    )


def build_settings(raw: dict[str, Any], plugins: PluginSet, source: str | None) -> Settings:
    """Validate everything, gathering all errors, and return ready-to-run settings."""
    errors: list[str] = []
    data = _load(TopSchema, raw, "webhooks", errors)
    for name, schema in SECTIONS.items():
        data[name] = _load(schema, raw.get(name) or {}, f"webhooks.{name}", errors)

    if data["admin"]["enabled"] and not data["admin"]["token"]:
        errors.append("webhooks.admin.token: required when the admin API is enabled")
    base = Path(source).parent if source else Path.cwd()
    state_dir = _resolve(data.get("stateDir") or "~/.clawdbot/webhooks", base)
    storage = data["storage"]
    storage_url = storage.get("url") or f"sqlite:///{state_dir / 'webhooks.sqlite3'}"
    if storage_url.startswith("sqlite:///") and not storage_url.startswith("sqlite:////"):
        storage_url = f"sqlite:///{_resolve(storage_url[len('sqlite:///') :], base)}"
    elif not storage_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        errors.append("webhooks.storage.url: expected sqlite:///PATH or postgresql://...")

    env = make_environment(
        {n: f for n, f in plugins.registries.filters.items()},
        strict=bool(data.get("strictTemplates")),
    )
    incoming = data["incoming"]
    default_retry = _policy(incoming.get("retry") or {})
    handlers = _build_handlers(
        data.get("handlers") or [], plugins, env, default_retry, errors, incoming
    )
    outgoing = _build_outgoing(data.get("outgoing") or [], plugins, env, errors)
    gateway = dict(data.get("gateway") or {})
    gateway.setdefault("type", "local")
    if not isinstance(gateway["type"], str):
        errors.append("webhooks.gateway.type: Not a valid string.")
    elif gateway["type"] not in plugins.registries.gateways:
        errors.append(
            "webhooks.gateway.type: " + _unknown(plugins, "gateways", gateway["type"], "gateway")
        )
    else:
        gateway_schema = getattr(plugins.registries.gateways[gateway["type"]], "schema", None)
        if gateway_schema is not None:
            options = {k: v for k, v in gateway.items() if k != "type"}
            try:
                gateway = {"type": gateway["type"], **gateway_schema().load(options)}
            except ValidationError as exc:
                errors.extend(flatten_errors(exc.messages, "webhooks.gateway"))

    routes: dict[str, HandlerSpec] = {}
    for i, spec in enumerate(handlers):
        if spec is None:
            continue
        for key in {spec.handler.id, spec.handler.path.lstrip("/")}:
            other = routes.get(key)
            if other is not None and other is not spec:
                errors.append(
                    f"webhooks.handlers[{i}]: route {key!r} is already used by handler "
                    f"{other.handler.id!r}"
                )
            routes[key] = spec
    seen: set[str] = set()
    for i, sub in enumerate(outgoing):
        if sub.id in seen:
            errors.append(f"webhooks.outgoing[{i}].id: duplicate subscription id {sub.id!r}")
        seen.add(sub.id)

    if errors:
        raise ConfigError(errors, source)
    return Settings(
        incoming=incoming,
        handlers=[h for h in handlers if h is not None],
        outgoing=outgoing,
        gateway=gateway,
        storage_url=storage_url,
        synchronous=storage["synchronous"],
        state_dir=state_dir,
        idle_timeout=data["sessions"]["idleTimeout"],
        strict_templates=bool(data.get("strictTemplates")),
        plugin_settings=data["plugins"]["settings"],
        source=source,
        routes=routes,
        admin=data["admin"],
        logging=data["logging"],
        lease_seconds=storage["leaseSeconds"],
        retention_delivered=storage["retention"]["delivered"],
        storage_schema=storage["schema"],
        pool_size=storage["poolSize"],
    )


def _load(schema: type[Schema], value: Any, path: str, errors: list[str]) -> dict[str, Any]:
    """Load one section; on errors record them and fall back to what was valid plus defaults."""
    if not isinstance(value, dict):
        errors.append(f"{path}: must be an object")
        value = {}
    try:
        loaded: dict[str, Any] = schema().load(value)
        return loaded
    except ValidationError as exc:
        errors.extend(flatten_errors(exc.messages, path))
        bad = exc.messages if isinstance(exc.messages, dict) else {}
        fallback: dict[str, Any] = schema().load(
            {k: v for k, v in value.items() if k not in bad and k in schema().fields}
        )
        return fallback


@functools.cache
def _schema(cls: type[Schema]) -> Schema:
    """One instance per schema class: building a marshmallow schema deep-copies its fields,
    which dominated loading a config with thousands of handlers."""
    return cls()


def _resolve(path: str, base: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _policy(given: Mapping[str, Any]) -> RetryPolicy:
    # Loading again fills the defaults that marshmallow leaves out of a ``load_default={}``.
    data = _schema(RetrySchema).load(dict(given))
    return RetryPolicy(
        max_attempts=data["maxAttempts"],
        backoff=data["backoff"],
        initial_delay=data["initialDelay"],
        max_delay=data["maxDelay"],
        jitter=data["jitter"],
    )


def _unknown(plugins: PluginSet, kind: str, name: str, what: str) -> str:
    off = plugins.disabled_provider(kind, name)
    if off is not None:
        return f"{what} {name!r} is provided by plugin {off.name!r}, which is {off.reason}"
    known = ", ".join(plugins.registries.of(kind).names()) or "none"
    return f"unknown {what} {name!r} (known: {known})"


def _template_paths(schema: Schema, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Where an action's schema declares ``Template`` fields, nested schemas included."""
    for name, fld in schema.fields.items():
        key = fld.data_key or name
        if isinstance(fld, Template):
            yield (*prefix, key)
        elif isinstance(fld, fields.Nested) and isinstance(fld.schema, Schema):
            yield from _template_paths(fld.schema, (*prefix, key))


_NO_FILTER = re.compile(r"No filter named '([^']+)'")


def _compile(env: Any, source: str, plugins: PluginSet) -> Any:
    """Compile a template; an unknown filter names the switched-off plugin that has it."""
    try:
        return compile_template(env, source)
    except TemplateError as exc:
        missing = _NO_FILTER.search(str(exc))
        off = plugins.disabled_provider("filters", missing.group(1)) if missing else None
        if off is not None:
            raise TemplateError(
                f"{exc} (it is provided by plugin {off.name!r}, which is {off.reason})"
            ) from exc
        raise


def _valid_part(given: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """The options that load on their own (each top-level key tried alone)."""
    valid: dict[str, Any] = {}
    for key, value in given.items():
        try:
            valid.update(schema.load({key: value}, partial=True, unknown=EXCLUDE))
        except ValidationError:
            continue
    return valid


def _dig(options: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = options
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _build_handlers(
    items: list[Any],
    plugins: PluginSet,
    env: Any,
    default_retry: RetryPolicy,
    errors: list[str],
    incoming: Mapping[str, Any] | None = None,
) -> list[HandlerSpec | None]:
    common = set(_schema(HandlerSchema).fields)
    specs: list[HandlerSpec | None] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        path = f"webhooks.handlers[{i}]"
        specs.append(None)
        if not isinstance(item, dict):
            errors.append(f"{path}: must be an object")
            continue
        try:
            base = _schema(HandlerSchema).load(item)
        except ValidationError as exc:
            errors.extend(flatten_errors(exc.messages, path))
            base = None
        name = item.get("action")
        action = plugins.registries.actions.get(name) if isinstance(name, str) else None
        if isinstance(name, str) and action is None:
            errors.append(f"{path}.action: " + _unknown(plugins, "actions", name, "action"))
        hid = item.get("id")
        if isinstance(hid, str):
            if hid in seen:
                errors.append(
                    f"{path}.id: duplicate handler id {hid!r} (also handlers[{seen[hid]}])"
                )
            seen.setdefault(hid, i)
        options: dict[str, Any] | None = None
        templates: dict[tuple[str, ...], Any] = {}
        if action is not None:
            schema = _schema(action.schema)
            own = {k: v for k, v in item.items() if k not in common or k in schema.fields}
            try:
                options = schema.load(own, unknown=RAISE)
            except ValidationError as exc:
                errors.extend(flatten_errors(exc.messages, path))
            # Templates are compiled even when other options failed, so one run of `check`
            # reports every mistake, not the first of each handler.
            loaded = options if options is not None else _valid_part(own, schema)
            if loaded:
                for tpath in _template_paths(schema):
                    source = _dig(loaded, tpath)
                    if isinstance(source, str):
                        try:
                            templates[tpath] = _compile(env, source, plugins)
                        except TemplateError as exc:
                            errors.append(f"{path}.{'.'.join(tpath)}: {exc}")
        session_key = None
        if base is not None and base["sessionKey"]:
            try:
                session_key = _compile(env, base["sessionKey"], plugins)
            except TemplateError as exc:
                errors.append(f"{path}.sessionKey: {exc}")
                base = None
        verify = _build_verify(item, base, incoming or {}, plugins, path, errors)
        if base is None or options is None or action is None or not base["enabled"]:
            continue
        route = (base["path"] or base["id"]).lstrip("/")
        specs[-1] = HandlerSpec(
            handler=Handler(
                id=base["id"],
                path="/" + route,
                action=base["action"],
                options=options,
                session_mode=base["sessionMode"],
                mode=base["mode"],
            ),
            action=action,
            templates=templates,
            session_key=session_key,
            secret=base["secret"],
            credential_headers=_credential_headers(base, incoming or {}, verify),
            verify=verify,
            retry=_policy(base["retry"]) if base["retry"] else default_retry,
            sync_timeout=base["syncTimeout"],
            rate_limit=base["rateLimit"],
            max_concurrent=base["maxConcurrent"],
            max_pending=base["maxPending"],
        )
    return specs


def _credential_headers(
    base: Mapping[str, Any], incoming: Mapping[str, Any], verify: Mapping[str, Any] | None
) -> frozenset[str]:
    names = set(CREDENTIAL_HEADERS)
    names.add(str(incoming.get("secretHeader") or "X-Webhook-Secret").lower())
    if base["secretHeader"]:
        names.add(base["secretHeader"].lower())
    if verify is not None and verify["type"] == "shared-secret":
        names.add(str(verify.get("header") or "X-Webhook-Secret").lower())
    return frozenset(names)


def _build_verify(
    item: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    incoming: Mapping[str, Any],
    plugins: PluginSet,
    path: str,
    errors: list[str],
) -> dict[str, Any] | None:
    """A handler's authentication: its ``verify`` options loaded by the verifier's own schema,
    or the shared secret (handler ``secret``, else ``incoming.secret``) when there is none."""
    raw = item.get("verify")
    if raw is None:
        if base is None:
            return None
        secret = base["secret"] or incoming.get("secret")
        if not secret:
            return None
        header = base["secretHeader"] or incoming.get("secretHeader") or "X-Webhook-Secret"
        raw = {"type": "shared-secret", "secret": secret, "header": header}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        return None  # HandlerSchema has reported it
    name = raw["type"]
    verifier = plugins.registries.verifiers.get(name)
    if verifier is None:
        errors.append(f"{path}.verify.type: " + _unknown(plugins, "verifiers", name, "verifier"))
        return None
    options = {k: v for k, v in raw.items() if k != "type"}
    schema = getattr(verifier, "schema", None)
    if schema is not None:
        try:
            options = _schema(schema).load(options, unknown=RAISE)
        except ValidationError as exc:
            errors.extend(flatten_errors(exc.messages, f"{path}.verify"))
            return None
    return {"type": name, **options}


def _build_outgoing(
    items: list[Any], plugins: PluginSet, env: Any, errors: list[str]
) -> list[Subscription]:
    subs: list[Subscription] = []
    for i, item in enumerate(items):
        path = f"webhooks.outgoing[{i}]"
        try:
            data = _schema(SubscriptionSchema).load(item if isinstance(item, dict) else {})
        except ValidationError as exc:
            errors.extend(flatten_errors(exc.messages, path))
            continue
        if data["transport"] not in plugins.registries.transports:
            errors.append(
                f"{path}.transport: "
                + _unknown(plugins, "transports", data["transport"], "transport")
            )
            continue
        schemes = getattr(plugins.registries.transports[data["transport"]], "schemes", None)
        scheme = data["url"].partition(":")[0].lower()
        if schemes is not None and scheme not in schemes:
            wanted = ", ".join(f"{s}://" for s in sorted(schemes))
            errors.append(f"{path}.url: transport {data['transport']!r} sends to {wanted} URLs")
            continue
        template = None
        if data["template"]:
            try:
                template = _compile(env, data["template"], plugins)
            except TemplateError as exc:
                errors.append(f"{path}.template: {exc}")
                continue
        if not data["enabled"]:
            continue
        breaker = _schema(BreakerSchema).load(dict(data["circuitBreaker"]))  # fills the defaults
        subs.append(
            Subscription(
                id=data["id"],
                url=data["url"],
                events=frozenset(data["events"]),
                method=data["method"],
                headers=data["headers"],
                secret=data["secret"],
                retry=_policy(data["retry"]),
                timeout=data["timeout"],
                transport=data["transport"],
                template=template,
                concurrency=data["concurrency"],
                retry_on_4xx=data["retryOn4xx"],
                breaker_threshold=breaker["threshold"],
                breaker_cooldown=breaker["cooldown"],
            )
        )
    return subs


def load_settings(config: str | None, plugins_for: Any = None) -> tuple[Settings, PluginSet]:
    """Find, read and validate the config, loading the plugins it selects."""
    path = find_config(config)
    raw = read_raw(path)
    extra = plugins_for or ()
    plugin_set = load_plugins(plugin_selection(raw), extra)
    return build_settings(raw, plugin_set, str(path) if path else None), plugin_set

"""The marshmallow schemas of the ``webhooks`` section: its shape, defaults and limits.

A section schema (``Section``) turns what it loaded into its dataclass from ``model``, keys in
snake_case; handler and subscription schemas stay plain dicts, finished by ``build``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, ClassVar

from clawdbot_webhooks_hookspecs import EVENT_TYPES
from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from clawdbot_webhooks.config.model import (
    AdminSettings,
    AuthFailures,
    EventIngress,
    IncomingSettings,
    LoggingSettings,
    PluginSettings,
    RateLimit,
    RetentionSettings,
    SessionsSettings,
    StorageSettings,
)
from clawdbot_webhooks.content_policy import MODES as CONTENT_POLICY_MODES
from clawdbot_webhooks.retry import BACKOFF_KINDS, RetryPolicy
from clawdbot_webhooks.signing import decode_secret

_WORD = re.compile(r"([a-z0-9])([A-Z])")


def snake_case(key: str) -> str:
    """``basePath`` -> ``base_path``, ``allowedIPs`` -> ``allowed_ips``."""
    return _WORD.sub(r"\1_\2", key).lower()


@functools.cache
def shared(cls: type[Schema]) -> Schema:
    """One instance per schema class: building a marshmallow schema deep-copies its fields,
    which dominated loading a config with thousands of handlers."""
    return cls()


def defaults(cls: type[Schema]) -> Any:
    """What a schema loads from ``{}``: marshmallow does not load a ``load_default``, so a
    nested section's default is given loaded."""
    return lambda: shared(cls).load({})


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


class Section(Strict):
    """A schema that loads into ``model``, each key in snake_case, lists as tuples."""

    model: ClassVar[Any]

    @post_load
    def _to_model(self, data: dict[str, Any], **kwargs: Any) -> Any:
        return self.model(
            **{
                snake_case(key): tuple(value) if isinstance(value, list) else value
                for key, value in data.items()
            }
        )


class RetrySchema(Section):
    model = RetryPolicy

    maxAttempts = fields.Integer(load_default=5, validate=validate.Range(min=1, max=1000))
    backoff = fields.String(load_default="exponential", validate=validate.OneOf(BACKOFF_KINDS))
    initialDelay = fields.Float(load_default=1.0, validate=validate.Range(min=0))
    maxDelay = fields.Float(load_default=3600.0, validate=validate.Range(min=0))
    jitter = fields.Boolean(load_default=True)


class RateLimitSchema(Section):
    """A token bucket: ``requests`` per ``per`` seconds, bursts of up to ``burst``."""

    model = RateLimit

    requests = fields.Integer(required=True, validate=validate.Range(min=1))
    per = fields.Float(load_default=1.0, validate=validate.Range(min=0.001))
    burst = fields.Integer(load_default=None, validate=validate.Range(min=1))


class AuthFailuresSchema(Section):
    """After ``max`` failed authentications within ``window`` seconds an address gets 429."""

    model = AuthFailures

    max = fields.Integer(load_default=20, validate=validate.Range(min=1))
    window = fields.Float(load_default=60.0, validate=validate.Range(min=0.001))


class EventIngressSchema(Section):
    """``POST /events/ingest`` for the Clawdbot event-bridge plugin, with a bearer token."""

    model = EventIngress

    token = fields.String(required=True, validate=validate.Length(min=1))


class ContentPatternField(fields.Field[Any]):
    """A pattern class's name (built-in or a plugin's), or ``{name, pattern}``: a class of the
    config's own, ``pattern`` a regular expression or a list of them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value:
            return value
        if (
            isinstance(value, dict)
            and set(value) == {"name", "pattern"}
            and isinstance(value["name"], str)
            and re.fullmatch(r"[A-Za-z0-9._-]+", value["name"])
        ):
            return {"name": value["name"], "pattern": value["pattern"]}
        raise ValidationError(
            "expected the name of a pattern class or {name, pattern} (a regular expression "
            "or a list of them)"
        )


class ContentPolicySchema(Strict):
    """What happens to text bound for an agent that matches known injection phrasing."""

    mode = fields.String(load_default=None, validate=validate.OneOf(CONTENT_POLICY_MODES))
    #: None: every registered pattern class.
    patterns = fields.List(ContentPatternField(), load_default=None)


class IncomingSchema(Section):
    model = IncomingSettings

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
    retry = fields.Nested(RetrySchema, load_default=defaults(RetrySchema))
    dedupWindow = fields.Float(load_default=7 * 86_400.0, validate=validate.Range(min=0))
    readTimeout = fields.Float(load_default=30.0, validate=validate.Range(min=0.001))
    #: How long a delivery may take to be stored before the sender is answered 503: well
    #: inside the 10 s after which the common senders give up and send it again.
    storeTimeout = fields.Float(load_default=5.0, validate=validate.Range(min=0.001, max=300))
    maxJsonDepth = fields.Integer(load_default=64, validate=validate.Range(min=1, max=500))
    rateLimitPerIP = fields.Nested(RateLimitSchema, load_default=None, allow_none=True)
    # On by default, {max: 20, window: 60}, as documented; null switches it off.
    authFailures = fields.Nested(
        AuthFailuresSchema, load_default=defaults(AuthFailuresSchema), allow_none=True
    )
    eventIngress = fields.Nested(EventIngressSchema, load_default=None, allow_none=True)
    contentPolicy = fields.Nested(ContentPolicySchema, load_default=None)


class AdminSchema(Section):
    """The admin API and dashboard under ``/admin``: off unless enabled, with its own bearer
    token; without ``port`` it is served by the webhook listener, with one on its own."""

    model = AdminSettings

    enabled = fields.Boolean(load_default=False)
    token = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=16))
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(0, 65535))


class LoggingSchema(Section):
    model = LoggingSettings

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
    retry = fields.Nested(RetrySchema, load_default=None)  # None: incoming.retry
    rateLimit = fields.Nested(RateLimitSchema, load_default=None, allow_none=True)
    maxConcurrent = fields.Integer(load_default=None, validate=validate.Range(min=1))
    maxPending = fields.Integer(load_default=None, validate=validate.Range(min=1))
    # Default: incoming.contentPolicy, key by key.
    contentPolicy = fields.Nested(ContentPolicySchema, load_default=None)

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
    retry = fields.Nested(RetrySchema, load_default=defaults(RetrySchema))
    timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.001))
    transport = fields.String(load_default="http")
    template = fields.String(load_default=None)
    enabled = fields.Boolean(load_default=True)
    concurrency = fields.Integer(load_default=8, validate=validate.Range(min=1, max=1000))
    retryOn4xx = fields.Boolean(load_default=False)
    circuitBreaker = fields.Nested(BreakerSchema, load_default=defaults(BreakerSchema))

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


class Age(fields.Field[float]):
    """Seconds, given as a number or as ``"90m"`` / ``"12h"`` / ``"7d"``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return parse_age(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc


class RetentionSchema(Section):
    model = RetentionSettings

    #: Finished deliveries (incoming done/dropped, outgoing done) are deleted after this
    #: long; 0 keeps them. Dead letters stay until purged.
    delivered = Age(load_default=7 * 86400.0)


def _not_reserved(name: str) -> bool:
    """PostgreSQL keeps ``pg_*`` names and ``information_schema`` for itself: creating the
    schema would fail at start-up, after ``check`` had said the config was fine."""
    if name.startswith("pg_") or name == "information_schema":
        raise ValidationError(f"{name!r} is reserved by PostgreSQL for system schemas")
    return True


class StorageSchema(Section):
    model = StorageSettings

    # Empty: the default database in the state directory.
    url = fields.String(load_default="")
    synchronous = fields.String(
        load_default="NORMAL", validate=validate.OneOf(["OFF", "NORMAL", "FULL", "EXTRA"])
    )
    #: How long a claimed delivery stays this process's before another may take it over; a
    #: heartbeat renews it while the work runs. Shorter = quicker takeover after a crash.
    leaseSeconds = fields.Float(load_default=30.0, validate=validate.Range(min=0.2))
    retention = fields.Nested(RetentionSchema, load_default=defaults(RetentionSchema))
    #: PostgreSQL: the schema the tables live in (created when missing); default: the URL's.
    # Lower case: PostgreSQL folds a name on the search path to it, so "Hooks" would be
    # made as one schema and searched as another.
    schema = fields.String(
        load_default=None,
        validate=[
            validate.Regexp(
                r"^[a-z_][a-z0-9_]{0,62}$",
                error="lower-case letters, digits and _, starting with a letter or _",
            ),
            _not_reserved,
        ],
    )
    #: PostgreSQL: connections this process keeps at most.
    poolSize = fields.Integer(load_default=10, validate=validate.Range(min=1, max=200))


class PluginsSchema(Section):
    model = PluginSettings

    disabled = fields.List(fields.String(), load_default=list)
    enabled = fields.List(fields.String(), load_default=None)
    settings = fields.Dict(keys=fields.String(), values=fields.Dict(), load_default=dict)


class SessionsSchema(Section):
    model = SessionsSettings

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

"""From the raw ``webhooks`` object to ``Settings``, with the plugins that config selected.

Three passes, all of whose errors are gathered before anything is reported: the shape of the
file (``schema``), each handler's action options (the action's own schema), and template
compilation. Every error names its key path, e.g.
``webhooks.handlers[2].agentId: Missing data for required field.``
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
from clawdbot_webhooks_hookspecs import Handler, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields

from clawdbot_webhooks.config.errors import ConfigError, flatten_errors
from clawdbot_webhooks.config.model import (
    CREDENTIAL_HEADERS,
    GatewaySettings,
    HandlerSpec,
    IncomingSettings,
    Settings,
    Subscription,
    VerifySpec,
)
from clawdbot_webhooks.config.schema import (
    SECTIONS,
    HandlerSchema,
    SubscriptionSchema,
    TopSchema,
    shared,
)
from clawdbot_webhooks.content_policy import DEFAULT_MODE, ContentPolicy, compile_patterns
from clawdbot_webhooks.plugins import PluginSet
from clawdbot_webhooks.retry import RetryPolicy
from clawdbot_webhooks.templates import (
    TemplateError,
    compile_template,
    make_environment,
    required_part,
)

DEFAULT_SECRET_HEADER = "X-Webhook-Secret"


def build_settings(raw: dict[str, Any], plugins: PluginSet, source: str | None) -> Settings:
    """Validate everything, gathering all errors, and return ready-to-run settings."""
    errors: list[str] = []
    data = _load(TopSchema, raw, "webhooks", errors)
    for name, schema in SECTIONS.items():
        data[name] = _load(schema, raw.get(name) or {}, f"webhooks.{name}", errors)

    if data["admin"].enabled and not data["admin"].token:
        errors.append("webhooks.admin.token: required when the admin API is enabled")
    base = Path(source).parent if source else Path.cwd()
    state_dir = _resolve(data.get("stateDir") or "~/.clawdbot/webhooks", base)
    storage = data["storage"]
    storage_url = storage.url or f"sqlite:///{state_dir / 'webhooks.sqlite3'}"
    if storage_url.startswith("sqlite:///") and not storage_url.startswith("sqlite:////"):
        storage_url = f"sqlite:///{_resolve(storage_url[len('sqlite:///') :], base)}"
    elif not storage_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        errors.append("webhooks.storage.url: expected sqlite:///PATH or postgresql://...")
    elif storage_url.startswith(("postgresql://", "postgres://")) and not _driver_installed(
        "asyncpg"
    ):
        errors.append(
            "webhooks.storage.url: PostgreSQL needs the asyncpg driver, which is not "
            "installed: pip install 'clawdbot-webhooks[postgres]'"
        )

    env = make_environment(
        {n: f for n, f in plugins.registries.filters.items()},
        strict=bool(data.get("strictTemplates")),
    )
    incoming: IncomingSettings = data["incoming"]
    handlers = _build_handlers(data.get("handlers") or [], plugins, env, incoming, errors)
    outgoing = _build_outgoing(data.get("outgoing") or [], plugins, env, errors)
    gateway = _build_gateway(data.get("gateway") or {}, plugins, errors)

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
        handlers=tuple(h for h in handlers if h is not None),
        outgoing=tuple(outgoing),
        gateway=gateway,
        storage=dataclasses.replace(storage, url=storage_url),
        plugins=data["plugins"],
        sessions=data["sessions"],
        admin=data["admin"],
        logging=data["logging"],
        state_dir=state_dir,
        strict_templates=bool(data.get("strictTemplates")),
        source=source,
        routes=routes,
    )


def _load(schema: type[Schema], value: Any, path: str, errors: list[str]) -> Any:
    """Load one section; on errors record them and fall back to what was valid plus defaults."""
    if not isinstance(value, dict):
        errors.append(f"{path}: must be an object")
        value = {}
    try:
        return schema().load(value)
    except ValidationError as exc:
        errors.extend(flatten_errors(exc.messages, path))
        bad = exc.messages if isinstance(exc.messages, dict) else {}
        return schema().load(
            {k: v for k, v in value.items() if k not in bad and k in schema().fields}
        )


def _resolve(path: str, base: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _unknown(plugins: PluginSet, kind: str, name: str, what: str) -> str:
    off = plugins.disabled_provider(kind, name)
    if off is not None:
        return f"{what} {name!r} is provided by plugin {off.name!r}, which is {off.reason}"
    known = ", ".join(plugins.registries.of(kind).names()) or "none"
    return f"unknown {what} {name!r} (known: {known})"


def _build_gateway(
    raw: Mapping[str, Any], plugins: PluginSet, errors: list[str]
) -> GatewaySettings:
    """``type`` (default ``local``) plus the options the gateway's own schema loads."""
    name = raw.get("type", "local")
    options = {k: v for k, v in raw.items() if k != "type"}
    if not isinstance(name, str):
        errors.append("webhooks.gateway.type: Not a valid string.")
        return GatewaySettings(type="local")
    if name not in plugins.registries.gateways:
        errors.append("webhooks.gateway.type: " + _unknown(plugins, "gateways", name, "gateway"))
        return GatewaySettings(type=name)
    schema = getattr(plugins.registries.gateways[name], "schema", None)
    if schema is None:  # a gateway without options (``local``): any given is a mistake
        errors.extend(f"webhooks.gateway.{key}: Unknown field." for key in options)
        return GatewaySettings(type=name)
    try:
        options = schema().load(options)
    except ValidationError as exc:
        errors.extend(flatten_errors(exc.messages, "webhooks.gateway"))
    return GatewaySettings(type=name, options=options)


#: What makes Jinja render a text otherwise than as it is: its syntax, and the line endings
#: it rewrites (a carriage return; one trailing newline, which it drops).
_NOT_LITERAL = ("{{", "{%", "{#", "\r")


def _literal(source: str) -> bool:
    """Whether a template field's text renders as itself: it then stays a plain string rather
    than being rendered again for every delivery."""
    return not source.endswith("\n") and not any(mark in source for mark in _NOT_LITERAL)


def _template_paths(schema: Schema, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Where an action's schema declares ``Template`` fields, nested schemas included."""
    for name, fld in schema.fields.items():
        key = fld.data_key or name
        if isinstance(fld, Template):
            yield (*prefix, key)
        elif isinstance(fld, fields.Nested) and isinstance(fld.schema, Schema):
            yield from _template_paths(fld.schema, (*prefix, key))


_NO_FILTER = re.compile(r"No filter named '([^']+)'")


def _driver_installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported: that costs start-up time)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _compile(
    env: ImmutableSandboxedEnvironment, source: str, plugins: PluginSet
) -> jinja2.Template:
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
    env: ImmutableSandboxedEnvironment,
    incoming: IncomingSettings,
    errors: list[str],
) -> list[HandlerSpec | None]:
    common = set(shared(HandlerSchema).fields)
    #: Pattern classes compiled once for all handlers.
    compiled: dict[str, list[re.Pattern[str]]] = {}
    specs: list[HandlerSpec | None] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        path = f"webhooks.handlers[{i}]"
        specs.append(None)
        if not isinstance(item, dict):
            errors.append(f"{path}: must be an object")
            continue
        try:
            base = shared(HandlerSchema).load(item)
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
        templates: dict[tuple[str, ...], jinja2.Template] = {}
        if action is not None:
            schema = shared(action.schema)
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
                    if isinstance(source, str) and not _literal(source):
                        try:
                            templates[tpath] = _compile(env, source, plugins)
                        except TemplateError as exc:
                            errors.append(f"{path}.{'.'.join(tpath)}: {exc}")
        session_key = None
        if base is not None and base["sessionKey"]:
            try:
                # Strict whatever strictTemplates says: see ``session_keys``.
                strict = env.overlay(undefined=jinja2.StrictUndefined, finalize=required_part)
                session_key = _compile(strict, base["sessionKey"], plugins)
            except TemplateError as exc:
                errors.append(f"{path}.sessionKey: {exc}")
                base = None
        verify = _build_verify(item, base, incoming, plugins, path, errors)
        policy = (
            _build_policy(base, incoming, plugins, path, errors, compiled)
            if base is not None
            else None
        )
        if base is None or options is None or action is None or not base["enabled"]:
            continue
        route = (base["path"] or base["id"]).lstrip("/")
        retry: RetryPolicy = base["retry"] or incoming.retry
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
            credential_headers=_credential_headers(base, incoming, verify),
            verify=verify,
            retry=retry,
            sync_timeout=base["syncTimeout"],
            rate_limit=base["rateLimit"],
            max_concurrent=base["maxConcurrent"],
            max_pending=base["maxPending"],
            screen=policy,
        )
    return specs


def _build_policy(
    base: Mapping[str, Any],
    incoming: IncomingSettings,
    plugins: PluginSet,
    path: str,
    errors: list[str],
    compiled: dict[str, list[re.Pattern[str]]],
) -> ContentPolicy:
    """The handler's content policy: its own ``contentPolicy`` keys, else
    ``incoming.contentPolicy``'s, else mode log with every registered pattern class."""
    own = base["contentPolicy"] or {}
    default = incoming.content_policy or {}
    mode = own.get("mode") or default.get("mode") or DEFAULT_MODE
    if own.get("patterns") is not None:
        entries, where = own["patterns"], f"{path}.contentPolicy.patterns"
    elif default.get("patterns") is not None:
        entries, where = default["patterns"], "webhooks.incoming.contentPolicy.patterns"
    else:
        entries, where = plugins.registries.content_patterns.names(), ""
    registry = plugins.registries.content_patterns
    # Classes defined in incoming.contentPolicy can be named by every handler.
    shared_classes = {
        e["name"]: e["pattern"] for e in default.get("patterns") or () if isinstance(e, dict)
    }
    patterns: dict[str, list[re.Pattern[str]]] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            if entry not in compiled:
                item = registry.get(entry) or shared_classes.get(entry)
                if item is None:
                    known = ", ".join([*registry.names(), *shared_classes]) or "none"
                    errors.append(f"{where}[{i}]: unknown pattern class {entry!r} (known: {known})")
                    continue
                try:
                    compiled[entry] = compile_patterns(item)
                except ValueError:
                    continue  # a shared class with a bad pattern: reported where it is defined
            patterns[entry] = compiled[entry]
            continue
        try:
            patterns[entry["name"]] = compile_patterns(entry["pattern"])
        except ValueError as exc:
            errors.append(f"{where}[{i}].pattern: {exc}")
    return ContentPolicy(base["id"], mode, patterns)


def _credential_headers(
    base: Mapping[str, Any], incoming: IncomingSettings, verify: VerifySpec | None
) -> frozenset[str]:
    names = set(CREDENTIAL_HEADERS)
    names.add((incoming.secret_header or DEFAULT_SECRET_HEADER).lower())
    if base["secretHeader"]:
        names.add(base["secretHeader"].lower())
    if verify is not None and verify.type == "shared-secret":
        names.add(str(verify.options.get("header") or DEFAULT_SECRET_HEADER).lower())
    if verify is not None:
        # Schemes whose sender puts the secret itself in a header of its own (GitLab, Telegram).
        names.update(h.lower() for h in getattr(verify.verifier, "credential_headers", ()))
    return frozenset(names)


def _build_verify(
    item: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    incoming: IncomingSettings,
    plugins: PluginSet,
    path: str,
    errors: list[str],
) -> VerifySpec | None:
    """A handler's authentication: its ``verify`` options loaded by the verifier's own schema,
    or the shared secret (handler ``secret``, else ``incoming.secret``) when there is none."""
    raw = item.get("verify")
    if raw is None:
        if base is None:
            return None
        secret = base["secret"] or incoming.secret
        if not secret and base["enabled"]:
            # An open endpoint must be asked for, never the result of a forgotten secret.
            errors.append(
                f"{path}: handler {base['id']!r} has no authentication: set its secret, "
                'incoming.secret or a verify scheme (verify: {type: "none"} makes it public)'
            )
        if not secret:
            return None
        header = base["secretHeader"] or incoming.secret_header or DEFAULT_SECRET_HEADER
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
            options = shared(schema).load(options, unknown=RAISE)
        except ValidationError as exc:
            errors.extend(flatten_errors(exc.messages, f"{path}.verify"))
            return None
    return VerifySpec(type=name, options=options, verifier=verifier)


def _build_outgoing(
    items: list[Any], plugins: PluginSet, env: ImmutableSandboxedEnvironment, errors: list[str]
) -> list[Subscription]:
    subs: list[Subscription] = []
    for i, item in enumerate(items):
        path = f"webhooks.outgoing[{i}]"
        try:
            data = shared(SubscriptionSchema).load(item if isinstance(item, dict) else {})
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
        breaker = data["circuitBreaker"]
        subs.append(
            Subscription(
                id=data["id"],
                url=data["url"],
                events=frozenset(data["events"]),
                method=data["method"],
                headers=data["headers"],
                secret=data["secret"],
                retry=data["retry"],
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

"""The plugin manager: which plugins load, in which order, and what each one registers.

Load order: block disabled names, load entry points (the built-ins are entry points of the
``clawdbot-webhooks`` distribution, found the same way as a third party's), ``check_pending()``.
Registration hooks are called one plugin at a time so every registered name remembers its
owner, which is what makes a clash error name both plugins.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy
from clawdbot_webhooks_hookspecs import PROJECT_NAME, specs

log = logging.getLogger(__name__)

#: The distribution whose entry points are the built-in plugins.
RUNTIME_DIST = "clawdbot-webhooks"

#: Comma-separated plugin names; when set it replaces the config's enabled/disabled lists.
LOAD_PLUGINS_ENV = "CLAWDBOT_WEBHOOKS_LOAD_PLUGINS"

#: The registration hooks and the registry each one fills.
KINDS = {
    "register_actions": "actions",
    "register_template_filters": "filters",
    "register_transports": "transports",
    "register_verifiers": "verifiers",
    "register_gateways": "gateways",
    "register_content_patterns": "content_patterns",
}

#: The hooks that are not registration hooks, as ``plugins --all`` lists them.
OTHER_HOOKS = ("on_incoming", "on_event", "register_commands")

T = TypeVar("T")


class PluginError(Exception):
    """A plugin could not be loaded or registered something that clashes."""


class Registry(Generic[T]):
    """Names to registered objects, each remembering the plugin that registered it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self.owners: dict[str, str] = {}

    def add(self, name: str, item: T, owner: str) -> None:
        if name in self._items:
            raise PluginError(
                f"{self.kind[:-1]} {name!r} is registered by both plugin "
                f"{self.owners[name]!r} and plugin {owner!r}; disable one of them in "
                "webhooks.plugins.disabled"
            )
        self._items[name] = item
        self.owners[name] = owner

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterable[tuple[str, T]]:
        return self._items.items()


@dataclass
class Registries:
    actions: Registry[Any] = field(default_factory=lambda: Registry("actions"))
    filters: Registry[Callable[..., Any]] = field(default_factory=lambda: Registry("filters"))
    transports: Registry[Any] = field(default_factory=lambda: Registry("transports"))
    verifiers: Registry[Any] = field(default_factory=lambda: Registry("verifiers"))
    gateways: Registry[Any] = field(default_factory=lambda: Registry("gateways"))
    content_patterns: Registry[Any] = field(default_factory=lambda: Registry("content_patterns"))

    def of(self, kind: str) -> Registry[Any]:
        registry: Registry[Any] = getattr(self, kind)
        return registry


@dataclass
class PluginInfo:
    """One plugin as ``clawdbot-webhooks plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    enabled: bool
    reason: str
    registers: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PluginSelection:
    """Which plugins the user switched on or off."""

    disabled: frozenset[str] = frozenset()
    enabled: frozenset[str] | None = None  # an allowlist of third-party plugins when set
    from_env: bool = False

    @classmethod
    def from_config(
        cls, disabled: Sequence[str] = (), enabled: Sequence[str] | None = None
    ) -> PluginSelection:
        env = os.environ.get(LOAD_PLUGINS_ENV)
        if env is not None:
            names = frozenset(n.strip() for n in env.split(",") if n.strip())
            return cls(enabled=names, from_env=True)
        return cls(frozenset(disabled), None if enabled is None else frozenset(enabled))

    def check_known(self, known: Iterable[str]) -> None:
        """A name that matches no plugin is a mistake (a misspelt name would switch nothing
        off): raise a ``PluginError`` that lists the names there are."""
        names = set(known)
        lists = (
            [("enabled", self.enabled or frozenset())]
            if self.from_env
            else [
                ("disabled", self.disabled),
                ("enabled", self.enabled or frozenset()),
            ]
        )
        for key, listed in lists:
            unknown = sorted(listed - names)
            if unknown:
                where = LOAD_PLUGINS_ENV if self.from_env else f"webhooks.plugins.{key}"
                raise PluginError(
                    f"{where}: no plugin is named {', '.join(map(repr, unknown))}; "
                    f"the plugins are: {', '.join(sorted(names))}"
                )

    def why_off(self, name: str, builtin: bool) -> str | None:
        """The reason a plugin is off, or None when it loads."""
        where = LOAD_PLUGINS_ENV if self.from_env else "webhooks.plugins"
        if name in self.disabled:
            return f"disabled in {where}.disabled"
        if not builtin and self.enabled is not None and name not in self.enabled:
            return (
                f"not listed in {LOAD_PLUGINS_ENV}"
                if self.from_env
                else (f"not listed in {where}.enabled")
            )
        return None


@dataclass
class PluginSet:
    """A loaded plugin manager and everything its plugins registered."""

    pm: pluggy.PluginManager
    registries: Registries
    infos: dict[str, PluginInfo]
    selection: PluginSelection
    #: The switched-off plugins, loaded only to say what they would register when asked
    #: (``describe_off``): never by a server or a check that finds nothing wrong.
    off: list[tuple[str, object, bool]] = field(default_factory=list)

    def describe_off(self) -> None:
        """Load each switched-off plugin alone, once, to fill in what it would register
        (its import-time code runs then: listings and error messages only)."""
        off, self.off = self.off, []
        _describe_off(off, self.infos)

    def disabled_provider(self, kind: str, name: str) -> PluginInfo | None:
        """The switched-off plugin that would register ``name``, found on the error path only."""
        self.describe_off()
        for info in self.infos.values():
            if not info.enabled and name in info.registers.get(kind, []):
                return info
        return None


def _entry_points() -> list[metadata.EntryPoint]:
    """The installed plugins, each name once (a distribution found twice on the path, as an
    editable install next to a stale one, counts once)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=PROJECT_NAME):
        found.setdefault(ep.name, ep)
    return list(found.values())


def _is_builtin(ep: metadata.EntryPoint) -> bool:
    return ep.dist is not None and _normal(ep.dist.name) == RUNTIME_DIST


def _normal(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(specs)
    return pm


def _collect(pm: pluggy.PluginManager, registries: Registries) -> dict[str, dict[str, list[str]]]:
    """Call each registration hook plugin by plugin so every name knows its owner."""
    from clawdbot_webhooks.plugins.calls import HookCalls, result_of
    from clawdbot_webhooks.plugins.validation import SINGULAR, problem

    registered: dict[str, dict[str, list[str]]] = {}
    for hook_name, kind in KINDS.items():
        calls = HookCalls(pm, hook_name)

        def each(calls: HookCalls = calls, hook_name: str = hook_name, kind: str = kind) -> None:
            for owner, caller in calls.each:

                def register(name: str, item: Any, _owner: str = owner) -> None:
                    wrong = problem(kind, name, item)
                    if wrong is not None:
                        raise PluginError(
                            f"plugin {_owner!r} registers {SINGULAR[kind]} {name!r}: {wrong}"
                        )
                    registries.of(kind).add(name, item, _owner)
                    registered.setdefault(_owner, {}).setdefault(kind, []).append(name)

                try:
                    result_of(caller, {"register": register})
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin {owner!r} failed in {hook_name}: {exc!r}") from exc

        def outside(name: str, item: Any, hook_name: str = hook_name) -> None:
            raise PluginError(f"a wrapper of {hook_name} cannot register {name!r}")

        try:
            calls.around({"register": outside}, each)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {calls.wrapper_name(exc)!r} failed in {hook_name}: {exc!r}"
            ) from exc
    return registered


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register one plugin; pluggy's refusal (an argument the specification does not have, a
    wrapper that is not a generator) becomes one line naming the plugin."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r}: {exc}".replace("\n", " ")) from exc


def _dist_of(plugin: object) -> tuple[str | None, str | None]:
    module = getattr(plugin, "__name__", "") or type(plugin).__module__
    top = module.split(".")[0]
    for dist_name in metadata.packages_distributions().get(top, []):
        try:
            return dist_name, metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def _hooks_of(plugin: object) -> list[str]:
    return sorted(
        name
        for name in dir(plugin)
        if name in KINDS or name in ("on_incoming", "on_event", "register_commands")
    )


def load_plugins(
    selection: PluginSelection | None = None,
    extra: Sequence[tuple[str, ModuleType | object]] = (),
) -> PluginSet:
    """Build the plugin manager.

    :param selection: which plugins are switched on or off.
    :param extra: (name, plugin) pairs registered after the built-ins, as if they came from an
        entry point; tests use this to add inline plugins.
    """
    selection = selection or PluginSelection()
    pm = _new_manager()
    infos: dict[str, PluginInfo] = {}
    off: list[tuple[str, object, bool]] = []
    entry_points = _entry_points()
    if not any(_is_builtin(ep) for ep in entry_points):
        raise PluginError(
            f"the built-in plugins are not installed: {RUNTIME_DIST} has no entry points in "
            f"group {PROJECT_NAME!r}; install the package again (pip install -e .)"
        )
    selection.check_known([*(ep.name for ep in entry_points), *(name for name, _ in extra)])

    # 1. block disabled names, 2. load entry points: third parties', then the built-ins (pluggy
    # calls the plugin registered last first), then inline extras
    for ep in sorted(entry_points, key=_is_builtin):
        builtin = _is_builtin(ep)
        reason = selection.why_off(ep.name, builtin)
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        if reason is not None:
            pm.set_blocked(ep.name)
            infos[ep.name] = PluginInfo(ep.name, dist, version, builtin, False, reason)
            off.append((ep.name, ep, builtin))
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} ({dist}) failed to import: {exc!r}") from exc
        _register(pm, plugin, ep.name)
        infos[ep.name] = PluginInfo(
            ep.name, dist, version, builtin, True, "built in" if builtin else "installed"
        )
    for name, plugin in extra:
        reason = selection.why_off(name, False)
        if reason is not None:
            infos[name] = PluginInfo(name, None, None, False, False, reason)
            off.append((name, plugin, False))
            continue
        _register(pm, plugin, name)
        dist, version = _dist_of(plugin)
        infos[name] = PluginInfo(name, dist, version, False, True, "registered inline")

    # 4. check_pending: a misspelt hook name fails loudly instead of never being called
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_unknown_hook(pm, exc.plugin, infos) or str(exc)) from exc

    registries = Registries()
    for owner, kinds in _collect(pm, registries).items():
        infos[owner].registers = kinds
    for name, plugin in pm.list_name_plugin():
        if name in infos:
            infos[name].hooks = _hooks_of(plugin)
    return PluginSet(pm, registries, infos, selection, off)


def _unknown_hook(
    pm: pluggy.PluginManager, plugin: object, infos: dict[str, PluginInfo]
) -> str | None:
    """What ``check_pending`` refused, said as the other plugin errors say it: the plugin by
    its entry point and distribution, and the hook it most likely meant."""
    name = pm.get_name(plugin)
    unknown = [
        hook
        for hook, caller in vars(pm.hook).items()
        if isinstance(caller, pluggy.HookCaller)
        and not caller.has_spec()
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    ]
    if name is None or not unknown:
        return None
    info = infos.get(name)
    hooks = [
        h for h, c in vars(pm.hook).items() if isinstance(c, pluggy.HookCaller) and c.has_spec()
    ]
    dist = info.distribution if info is not None else None
    said = f"plugin {name!r}" + (f" ({dist})" if dist else "")
    guess = difflib.get_close_matches(unknown[0], hooks, n=1)
    meant = f"; did you mean {guess[0]!r}?" if guess else ""
    return f"{said} implements {unknown[0]!r}, which is no hook of the plugin API{meant}"


def _describe_off(off: list[tuple[str, object, bool]], infos: dict[str, PluginInfo]) -> None:
    """Find out what switched-off plugins would register, so listings and errors can say it.

    Each one is loaded alone into a scratch manager whose registrations go nowhere.
    """
    for name, source, _builtin in off:
        try:
            plugin = source.load() if isinstance(source, metadata.EntryPoint) else source
            scratch = _new_manager()
            scratch.register(plugin, name=name)
            infos[name].registers = _collect(scratch, Registries()).get(name, {})
            infos[name].hooks = _hooks_of(plugin)
        except Exception as exc:  # a broken disabled plugin must not stop anything
            log.debug("could not inspect disabled plugin %s: %r", name, exc)

"""Calling a hook plugin by plugin, through pluggy.

Plain ``pm.hook.x(...)`` hands every implementation the same arguments and lets the first
exception end the call. The runtime wants more: each failure attributed to its plugin,
``on_incoming`` chained (each implementation sees what the one before returned) and one
plugin's exception kept from the others. So each implementation is called alone, but through a
pluggy hook caller that holds just that plugin, and all of them run inside one call of the
hook's wrappers. Pluggy therefore still decides which arguments an implementation gets, the
order (``tryfirst``/``trylast``), what wrappers see, and what tracing and call monitoring
record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import pluggy
from clawdbot_webhooks_hookspecs import DROP, ActionError, Delivery, Handler

log = logging.getLogger(__name__)

T = TypeVar("T")


class HookCalls:
    """One hook of a loaded plugin manager, ready to be called plugin by plugin.

    Built once per plugin manager: the plugins do not change after they load.
    """

    def __init__(self, pm: pluggy.PluginManager, name: str) -> None:
        self.name = name
        caller: pluggy.HookCaller = getattr(pm.hook, name)
        impls = caller.get_hookimpls()
        plugins = {id(impl.plugin): impl.plugin for impl in impls}
        self._wrappers = [impl for impl in impls if impl.wrapper or impl.hookwrapper]
        #: (plugin name, a caller of that plugin alone), in pluggy's call order: pluggy calls
        #: its list from the end, so tryfirst implementations come first.
        self.each: list[tuple[str, pluggy.HookCaller]] = []
        seen: set[int] = set()
        for impl in reversed(impls):
            if impl.wrapper or impl.hookwrapper or id(impl.plugin) in seen:
                continue
            seen.add(id(impl.plugin))
            others = [p for key, p in plugins.items() if key != id(impl.plugin)]
            self.each.append((impl.plugin_name, pm.subset_hook_caller(name, others)))
        plain = [plugins[key] for key in seen]
        self._around = pm.subset_hook_caller(name, plain) if self._wrappers else None
        #: Whether any plugin implements the hook (an attribute: asked for every delivery).
        self.active = bool(self.each) or self._around is not None

    def __bool__(self) -> bool:
        return self.active

    def around(self, kwargs: Mapping[str, object], inner: Callable[[], T]) -> T | Any:
        """Run ``inner`` (which calls the implementations one by one) inside the hook's
        wrappers, as one call of the hook with ``kwargs``. Returns what ``inner`` returned,
        or what a wrapper replaced it with."""
        if self._around is None:
            return inner()
        results = self._around.call_extra([inner], kwargs)
        if isinstance(results, list):
            return results[0] if results else None
        return results

    def wrapper_name(self, exc: BaseException) -> str | None:
        """The plugin whose wrapper raised ``exc``, found by its code in the traceback."""
        codes = {
            getattr(impl.function, "__code__", None): impl.plugin_name for impl in self._wrappers
        }
        tb = exc.__traceback__
        culprit = None
        while tb is not None:
            culprit = codes.get(tb.tb_frame.f_code, culprit)
            tb = tb.tb_next
        return culprit


def result_of(caller: pluggy.HookCaller, kwargs: Mapping[str, object]) -> Any:
    """Call one plugin's implementation through pluggy; ``None`` when it returned nothing."""
    results = caller(**kwargs)
    if isinstance(results, list):
        return results[0] if results else None
    return results


def call_on_incoming(calls: HookCalls, delivery: Delivery, handler: Handler) -> Delivery | object:
    """Run the ``on_incoming`` chain: the delivery to act on, or ``DROP``.

    Each implementation sees what the one before returned; the first exception ends the chain
    and fails the attempt with an ``ActionError`` that names the plugin.
    """
    if not calls:
        return delivery
    kwargs = {"delivery": delivery, "handler": handler}

    def chain() -> Delivery | object:
        current = delivery
        for plugin, caller in calls.each:
            try:
                changed: object = result_of(caller, {"delivery": current, "handler": handler})
            except Exception as exc:
                raise ActionError(f"plugin {plugin!r} failed in on_incoming: {exc!r}") from exc
            if changed is DROP:
                log.info("delivery %s dropped by plugin %r", delivery.id, plugin)
                return DROP
            if isinstance(changed, Delivery):
                # The id and session are the runtime's: a plugin cannot move a delivery.
                current = replace(changed, id=delivery.id, session=delivery.session)
        return current

    try:
        outcome = calls.around(kwargs, chain)
    except ActionError:
        raise
    except Exception as exc:
        plugin = calls.wrapper_name(exc)
        raise ActionError(f"plugin {plugin!r} failed in on_incoming: {exc!r}") from exc
    if outcome is DROP or isinstance(outcome, Delivery):
        return outcome
    return delivery

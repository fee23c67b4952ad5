"""What a registered object must look like, checked when the plugins load.

A mistake found here stops ``check`` and ``serve`` with one line naming the plugin, the kind,
the name and what is wrong, whether or not a handler uses the object yet; found later, it would
be a traceback from deep in the config loader or a delivery failing at run time.
"""

from __future__ import annotations

import inspect
from typing import Any

from marshmallow import Schema

#: The singular of each registry's kind, as error messages say it.
SINGULAR = {
    "actions": "action",
    "filters": "filter",
    "transports": "transport",
    "verifiers": "verifier",
    "gateways": "gateway",
    "content_patterns": "content pattern",
}


def _is_schema_class(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, Schema)


def _method(item: object, name: str) -> Any:
    return getattr(item, name, None)


def problem(kind: str, name: object, item: object) -> str | None:
    """What is wrong with registering ``item`` as ``name`` in ``kind``, or None."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        return "the name must be a non-empty string without spaces"
    if kind == "actions":
        schema = getattr(item, "schema", None)
        if schema is None:
            return "has no schema (a marshmallow Schema class for its options)"
        if not _is_schema_class(schema):
            return "has a schema that is not a marshmallow Schema class"
        run = _method(item, "run")
        if run is None:
            return "has no run method (async def run(ctx))"
        if not inspect.iscoroutinefunction(run):
            return "has a run that is not a coroutine function (async def run(ctx))"
    elif kind == "transports":
        if not callable(_method(item, "send")):
            return "has no send method (async def send(request))"
    elif kind == "verifiers":
        if not callable(_method(item, "verify")):
            return "has no verify method (def verify(request, options))"
        schema = getattr(item, "schema", None)
        if schema is not None and not _is_schema_class(schema):
            return "has a schema that is not a marshmallow Schema class"
    elif kind == "filters":
        if not callable(item):
            return "is not callable"
    elif kind == "content_patterns":
        from clawdbot_webhooks.content_policy import compile_patterns

        try:
            compile_patterns(item)
        except ValueError as exc:
            return str(exc)
    elif kind == "gateways":
        if not callable(item):
            return "is not a callable factory (factory(options, env) -> Gateway)"
        schema = getattr(item, "schema", None)
        if schema is not None and not _is_schema_class(schema):
            return "has a schema that is not a marshmallow Schema class"
    return None

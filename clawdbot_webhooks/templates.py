"""Jinja2 templates: a sandbox, plugin filters, and the context a delivery renders with.

Only templates written in the config are ever compiled. Payload text reaches a template as
data (variables), so a payload value that looks like ``{{ ... }}`` is printed as it is.
"""

from __future__ import annotations

import functools
import hashlib
import keyword
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from clawdbot_webhooks_hookspecs import Delivery, Handler
from jinja2 import ChainableUndefined, StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clawdbot_webhooks.forms import form_of

#: Names the runtime puts into every template context; payload keys never replace them.
RESERVED = frozenset({"event", "headers", "query", "hook", "delivery"})


# Python internals that only an escape attempt would name (dunders are refused as a class).
_INTERNALS = frozenset(
    {"mro", "func_globals", "f_globals", "f_locals", "gi_frame", "gi_code", "cr_frame", "tb_frame"}
)


#: A name-mangled private attribute, e.g. ``self._TemplateReference__context``.
_MANGLED = re.compile(r"_[A-Za-z][A-Za-z0-9]*__")


class TemplateError(Exception):
    """A config template that does not compile or is unsafe."""


#: What a JSON payload is made of besides mappings: values, never objects to explore.
_JSON_VALUES = (str, int, float, bool, list, tuple, type(None))


#: A look-up in a template: a context name and the keys and indexes after it.
Lookup = tuple[str, tuple[str | int, ...]]


class DataTemplate(Template):
    """A config template, knowing which variables of the context it reads."""

    #: The top-level names it reads; None when a filter or function it calls is given the
    #: whole context (``pass_context``) and may read any.
    reads: frozenset[str] | None = None
    #: Its text and look-ups in order, when it is nothing else (``{{ a.b[0] }}``: no filter,
    #: tag or expression): rendered then without jinja's machinery, while each look-up finds
    #: a plain JSON value, as jinja would have found it (``plain_parts``).
    parts: tuple[str | Lookup, ...] | None = None

    def render(self, *args: Any, **kwargs: Any) -> str:
        parts = self.parts
        if parts is not None and len(args) == 1 and not kwargs and type(args[0]) is dict:
            text = _looked_up(parts, args[0])
            if text is not None:
                return text
        return super().render(*args, **kwargs)


def _looked_up(parts: tuple[str | Lookup, ...], context: dict[str, Any]) -> str | None:
    """The template's text with each look-up's value, or None where one is missing or not a
    plain value (jinja then renders it: an undefined value, an error, a list printed)."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, keys = part
        value: Any = context.get(name, _MISSING)
        try:
            for key in keys:
                # As ``DataEnvironment`` looks up: a key of a mapping, an index of a list.
                kind = type(value)
                if kind is not dict and not (kind is list and type(key) is int):
                    return None
                value = value[key]
        except (KeyError, IndexError):
            return None
        kind = type(value)
        if kind is str:
            out.append(value)
        elif kind is int or kind is float or kind is bool or value is None:
            out.append(str(value))
        else:
            return None
    return "".join(out)


_MISSING: Any = object()


class DataEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with payload values seen only as JSON can hold them.

    ``x.name`` and ``x["name"]`` look up a key of a mapping and an index of a list, nothing
    else: no method or attribute of a str, list or dict is reachable, so ``{{ event.title }}``
    on a string payload is missing (empty, or an error in strict mode) instead of printing a
    bound method and its address, and a payload key named ``items`` is that key.
    """

    template_class = DataTemplate

    def getattr(self, obj: Any, attribute: str) -> Any:
        # A parsed JSON object is a dict: known without the ABC's longer check.
        if type(obj) is dict or isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=attribute)
        if isinstance(obj, _JSON_VALUES):
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if type(obj) is dict or isinstance(obj, Mapping | list | tuple | str):
            try:
                return obj[argument]
            except (KeyError, IndexError, TypeError):
                return self.undefined(obj=obj, name=argument)
        if isinstance(obj, _JSON_VALUES):
            return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)


def make_environment(
    filters: Mapping[str, Callable[..., Any]], *, strict: bool = False
) -> DataEnvironment:
    """The one environment every config template compiles in.

    Missing values render empty by default (``ChainableUndefined`` makes
    ``{{event.repository.name}}`` empty even when ``repository`` is absent); ``strict`` makes
    them an error instead. Autoescape stays off: the output is chat text, not HTML.
    """
    env = DataEnvironment(
        undefined=StrictUndefined if strict else ChainableUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters.update(filters)
    return env


def required_part(value: Any) -> Any:
    """``finalize`` for a template whose every ``{{ ... }}`` must have a value (a session
    key): a blank one is as missing as an absent one, so ``ops-{{ alert.team }}`` with
    ``team: ""`` is not ``ops-`` either."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("a value in it is empty")
    return value


def _unsafe_names(tree: nodes.Node) -> list[str]:
    found: list[str] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Filter):
            # ``x|attr("__class__")`` is attribute access spelled as a filter.
            first = node.args[0] if node.args else None
            if node.name != "attr" or not isinstance(first, nodes.Const):
                continue
            if not isinstance(first.value, str):
                continue
            name = first.value
        elif isinstance(node, nodes.Name):
            name = node.name
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            name = node.arg.value
        else:
            continue
        if name.startswith("__") or _MANGLED.match(name) or name in _INTERNALS:
            found.append(name)
    return found


def _reads(env: ImmutableSandboxedEnvironment, tree: nodes.Template) -> frozenset[str] | None:
    """The context's names a template reads, or None when it calls something that is given
    the whole context and may read any name it likes."""
    for node in tree.find_all((nodes.Filter, nodes.Test, nodes.Call)):
        if isinstance(node, nodes.Filter):
            called = env.filters.get(node.name)
        elif isinstance(node, nodes.Test):
            called = env.tests.get(node.name)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            called = env.globals.get(node.node.name)
        else:
            continue
        passed = getattr(called, "jinja_pass_arg", None)
        if passed is not None and passed.name == "context":
            return None
    # Every name it loads: a loop's variable too, harmless (it hides the context's anyway),
    # and the globals' names, which a payload key of the same name replaces.
    return frozenset(node.name for node in tree.find_all(nodes.Name) if node.ctx == "load")


def plain_parts(
    env: ImmutableSandboxedEnvironment, tree: nodes.Template
) -> tuple[str | Lookup, ...] | None:
    """A template's text and look-ups, when that is all it is and jinja would print each
    look-up's value with ``str`` (no ``finalize``, no autoescape); else None."""
    if env.finalize is not None or env.autoescape is not False:
        return None
    if not tree.body:
        return ()
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts: list[str | Lookup] = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        keys: list[str | int] = []
        while isinstance(node, nodes.Getattr | nodes.Getitem):
            if isinstance(node, nodes.Getattr):
                keys.append(node.attr)
            elif isinstance(node.arg, nodes.Const) and type(node.arg.value) in (str, int):
                keys.append(node.arg.value)
            else:
                return None
            node = node.node
        # ``self`` is jinja's reference to the template itself, whatever the context holds.
        if not isinstance(node, nodes.Name) or node.name == "self":
            return None
        parts.append((node.name, tuple(reversed(keys))))
    return tuple(parts)


def compile_template(env: ImmutableSandboxedEnvironment, source: str) -> Template:
    """Compile a config template, refusing what could only be an attempt to leave the sandbox.

    The sandbox would stop such access at render time too; refusing it at load time means
    ``check`` reports it before any request arrives.
    """
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    unsafe = _unsafe_names(tree)
    if unsafe:
        raise TemplateError(
            f"template refused: access to {unsafe[0]!r} is not allowed in the sandbox"
        )
    try:
        template = env.from_string(source)
    except TemplateSyntaxError as exc:  # raised while compiling, e.g. an unknown filter
        raise TemplateError(f"template error on line {exc.lineno}: {exc.message}") from exc
    # Nothing changes the environment's globals once templates compile: a plain dict of them
    # spares every render copying them out of jinja's ChainMap (bench/README.md).
    template.globals = dict(template.globals)
    if isinstance(template, DataTemplate):
        template.reads = _reads(env, tree)
        template.parts = plain_parts(env, tree)
    return template


def reads_of(templates: Iterable[Template]) -> frozenset[str] | None:
    """The context's names any of ``templates`` reads; None when one may read any."""
    names: set[str] = set()
    for template in templates:
        reads = getattr(template, "reads", None)
        if reads is None:
            return None
        names |= reads
    return frozenset(names)


def context_for(
    delivery: Delivery, handler: Handler, names: frozenset[str] | None = None
) -> dict[str, Any]:
    """The variables a delivery's templates see; with ``names`` (``reads_of`` its templates),
    only those of them: the same values, without building what no template reads."""
    context: dict[str, Any] = {}
    payload = delivery.payload
    mapping = type(payload) is dict or isinstance(payload, Mapping)
    if names is None:
        special = _SPECIAL
        if mapping:
            for key in payload:
                if isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key):
                    context[key] = payload[key]
    else:
        keys, special = _wanted(names)
        if mapping:
            for key in keys:
                if key in payload:
                    context[key] = payload[key]
    if not special:
        return context
    if "form" in special:
        form = form_of(delivery.body, delivery.content_type)
        if form is not None:  # the fields as sent, also when `event` is the JSON one they held
            context["form"] = form
    # Payload keys never replace these (``RESERVED``).
    if "event" in special:
        context["event"] = payload
    if "headers" in special:
        context["headers"] = dict(delivery.headers)
    if "query" in special:
        context["query"] = dict(delivery.query)
    if "hook" in special:
        context["hook"] = {"id": handler.id, "path": handler.path, "action": handler.action}
    if "delivery" in special:
        context["delivery"] = {
            "id": delivery.id,
            "session": delivery.session,
            "received_at": delivery.received_at,
            "client_ip": delivery.client_ip,
            "content_type": delivery.content_type,
        }
    return context


#: The names the runtime fills in rather than the payload (``form`` only when there is one).
_SPECIAL = RESERVED | {"form"}


@functools.lru_cache(maxsize=1024)
def _wanted(names: frozenset[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    """Of the names templates read: those a payload key may give (identifiers that are not
    keywords), and the runtime's own; worked out once per set of names."""
    keys = tuple(n for n in names if n.isidentifier() and not keyword.iskeyword(n))
    return keys, names & _SPECIAL


def is_trusted(path: tuple[str, ...]) -> bool:
    """Whether a handler's template at ``path`` (its place among the options) holds the
    operator's own words, rendered with ``trusted_context``: ``instructions``."""
    return path == ("instructions",)


def trusted_context(delivery: Delivery, handler: Handler, persistent: bool) -> dict[str, Any]:
    """What a trusted template (a handler's ``instructions``) sees of a delivery: the hook and
    the delivery's ids, none of the sender's text (payload, headers, query). A persistent
    session's key may be rendered from the payload: it is seen as a digest, an id that
    carries none of its text."""
    session = delivery.session
    if persistent:
        session = "sha256:" + hashlib.sha256(session.encode("utf-8", "replace")).hexdigest()[:16]
    return {
        "hook": {"id": handler.id, "path": handler.path, "action": handler.action},
        "delivery": {"id": delivery.id, "session": session},
    }

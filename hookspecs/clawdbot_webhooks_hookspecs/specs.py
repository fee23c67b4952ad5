"""Hook specifications: what a plugin may implement.

Every hook is synchronous and cheap, because pluggy cannot await. Asynchronous work lives in the
objects a hook registers (``async def run``, ``async def send``) or in an awaitable that
``on_event`` returns, which the runtime awaits with errors isolated per plugin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .markers import hookspec
from .types import Action, Delivery, Event, GatewayFactory, Handler, Transport, Verifier


@hookspec
def register_actions(register: Callable[[str, Action], None]) -> None:
    """Register handler actions: ``register(name, action)``.

    :param register: call it once per action; ``action`` has a marshmallow ``schema`` for its
        handler options and ``async def run(ctx) -> result``.
    """


@hookspec
def register_template_filters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register Jinja2 filters usable in every template: ``register(name, function)``.

    :param register: call it once per filter; the function receives the filtered value first.
    """


@hookspec
def register_transports(register: Callable[[str, Transport], None]) -> None:
    """Register how outgoing deliveries are sent: ``register(name, transport)``.

    :param register: call it once per transport; ``transport`` has ``async def send(request)``.
    """


@hookspec
def register_verifiers(register: Callable[[str, Verifier], None]) -> None:
    """Register incoming authentication schemes: ``register(name, verifier)``.

    :param register: call it once per scheme; ``verifier`` has a ``schema`` for its options
        and ``def verify(request, options)``, which raises ``VerificationError`` to refuse.
    """


@hookspec
def register_gateways(register: Callable[[str, GatewayFactory], None]) -> None:
    """Register connections to Clawdbot: ``register(name, factory)``.

    :param register: call it once per gateway type; ``factory(options, env)`` returns a
        ``Gateway``.
    """


@hookspec
def register_content_patterns(register: Callable[[str, Any], None]) -> None:
    """Register pattern classes for the content policy: ``register(name, patterns)``.
    Since 1.6.

    :param register: call it once per class; ``patterns`` is a regular expression (text,
        matched case-insensitively, or compiled) or a list of them. Handlers' ``contentPolicy``
        uses every registered class unless its ``patterns`` names some.
    """


@hookspec
def on_incoming(delivery: Delivery, handler: Handler) -> Delivery | object | None:
    """Called for every accepted incoming delivery, just before its action runs.

    :param delivery: the stored delivery, with its parsed payload.
    :param handler: the handler it was routed to.
    :return: ``None`` to keep it as it is, a new ``Delivery`` (``dataclasses.replace``) to
        transform it, or ``DROP`` to skip the action. Plugins are called in turn, each seeing
        what the one before returned.
    """


@hookspec
def on_event(event: Event) -> Awaitable[None] | None:
    """Called for every event on the bus.

    :param event: the event, exactly as outgoing subscribers receive it.
    :return: ``None``, or an awaitable the runtime awaits; an error in it is logged with the
        plugin's name and never reaches other subscribers.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``clawdbot-webhooks`` command. Since 1.4.

    :param cli: the command's ``click.Group``: ``@cli.command()`` adds one. A command finds a
        ``CommandEnv`` with ``click.get_current_context().find_object(CommandEnv)``, which
        reads the config the way every other command does.
    """

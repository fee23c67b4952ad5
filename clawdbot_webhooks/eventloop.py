"""The event loop the server runs on.

uvloop where it is installed (a dependency on Linux and macOS): every webhook crosses the loop
several times, and uvloop's crossings are the cheaper (figures in ``bench/README.md``).
asyncio's loop remains a choice (``serve --loop asyncio``) and is what runs where uvloop is not
installed (Windows)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: ``serve --loop`` choices: ``auto`` is uvloop when installed, else asyncio.
CHOICES = ("auto", "uvloop", "asyncio")


class LoopUnavailable(Exception):
    pass


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop of the chosen kind."""
    if choice not in CHOICES:
        raise ValueError(f"event loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailable("uvloop is not installed (pip install uvloop)") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def chosen_name(choice: str) -> str:
    """What ``choice`` runs on here: "uvloop" or "asyncio"."""
    loop = loop_factory(choice)()
    try:
        return loop_name(loop)
    finally:
        loop.close()

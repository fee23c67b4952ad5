"""Built-in template filters."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from typing import Any

from clawdbot_webhooks_hookspecs import hookimpl


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON text, non-ASCII kept as it is (Jinja's ``tojson`` escapes it for HTML)."""
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def shorten(value: Any, width: int = 80, placeholder: str = "…") -> str:
    """Collapse white space and cut at a word boundary to at most ``width`` characters."""
    return textwrap.shorten(str(value), width=width, placeholder=placeholder)


def first_line(value: Any) -> str:
    """The first line of a text: commit messages, issue bodies."""
    return str(value).strip().splitlines()[0] if str(value).strip() else ""


@hookimpl
def register_template_filters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("json", to_json)
    register("shorten", shorten)
    register("first_line", first_line)

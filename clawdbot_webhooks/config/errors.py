"""Config errors: every problem as one ``key.path: message`` line, all gathered first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class ConfigError(Exception):
    """One or more config problems, each ``key.path: message``."""

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))


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

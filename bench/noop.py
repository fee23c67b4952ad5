"""A custom action that does nothing, so a benchmark measures the pipeline, not an action."""

from __future__ import annotations

from typing import Any


async def noop(ctx: Any) -> None:
    return None

"""JSON text on the hot path: orjson, the faster (``bench/README.md``), for what every
delivery writes (its headers, the answer to the sender). The standard library stays
behind it for what orjson refuses: strings with lone surrogates (header bytes that were not
UTF-8) and integers beyond 64 bits."""

from __future__ import annotations

import json
from typing import Any

import orjson


def readable(value: Any) -> str:
    """For answers that carry what actions and payloads returned: anything (``str`` of what
    JSON has no type for), non-ASCII left readable."""
    return json.dumps(value, default=str, ensure_ascii=False)


def anything(value: Any) -> str:
    """Compact JSON of anything an action returned (``str`` of what JSON has no type for)."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value, default=str)


def dumps(value: Any) -> str:
    return encode(value).decode()


def encode(value: Any) -> bytes:
    """The JSON text as UTF-8 bytes, ready to send."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value).encode()

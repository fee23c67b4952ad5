"""Reading an incoming request: who sent it, its body within the size limit, what it says."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import ipaddress
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from clawdbot_webhooks.content_types import media_and_charset
from clawdbot_webhooks.forms import FORM_TYPE, parse_form

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Rejected(Exception):
    """A request refused with a status code and a message for the JSON error body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address parsed once per distinct text: senders repeat, parsing shows in profiles."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _normalized(text: str) -> str | None:
    """The address as ``str(_address(text))``, cached for the same reason."""
    address = _address(text)
    return None if address is None else str(address)


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Iterable[IPNetwork]
) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Iterable[IPNetwork]) -> str:
    """The client's address. ``X-Forwarded-For`` counts only when the peer is a trusted proxy,
    and then it is walked from the right past every trusted hop: the first untrusted address is
    the client (anything further left could have been written by the client itself)."""
    if not forwarded_for:  # the common case: a direct connection
        return _normalized(peer or "") or peer or ""
    trusted = list(trusted)
    address = _address(peer or "")
    if address is None:
        return peer or ""
    if not _within(address, trusted):
        return str(address)
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _address(hop)
        if hop_address is None:
            break  # a malformed hop: stop trusting the chain at the last good address
        address = hop_address
        if not _within(address, trusted):
            break
    return str(address)


def ip_allowed(ip: str, allowed: Iterable[IPNetwork] | None) -> bool:
    if allowed is None:
        return True
    address = _address(ip)
    return address is not None and _within(address, allowed)


_UNREADABLE = "body could not be read: it does not decode as its Content-Encoding says"


def whole_body(request: web.Request, limit: int) -> bytes | None:
    """The body when it was received whole with the headers (most are), refused (413) when
    longer than ``limit``; None when more is to come (``read_body``). No coroutine, no timer,
    and its size known without Content-Length."""
    content = request.content
    if not content.is_eof():
        return None
    try:
        body = content.read_nowait()
    except web.RequestPayloadError:  # a Content-Encoding that does not decode, say
        raise Rejected(400, _UNREADABLE) from None
    if len(body) > limit:
        raise Rejected(413, f"body of {len(body)} bytes exceeds the limit of {limit} bytes")
    return body


async def read_body(request: web.Request, limit: int, timeout: float | None = None) -> bytes:
    """The body of a request that ``whole_body`` found still coming, refusing it (413) as soon
    as it is known to exceed ``limit``: from Content-Length before reading anything,
    otherwise while reading the chunks.

    ``timeout`` bounds the whole body, not the gap between chunks, so a client trickling a
    byte at a time cannot hold a connection open (408)."""
    content = request.content
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Rejected(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Rejected(408, f"request body not received within {timeout:g}s") from None
    except web.RequestPayloadError:
        raise Rejected(400, _UNREADABLE) from None
    return b"".join(chunks)


def _strict_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is too large to hold")
    return value


#: orjson holds the integers from -2**63 to 2**64 - 1; beyond them it makes a float of the
#: number, losing its digits. An integer it may not hold has 20 digits, or 19 after a minus
#: (or it is only digits inside a string, which the exact parser takes as well).
_LONG_DIGITS = b"0" * 20
_LONG_NEGATIVE = b"-" + b"0" * 19
#: What both have in common: rare, so the one search most bodies need.
_NINETEEN_DIGITS = b"0" * 19
#: Every digit a zero and every opening bracket a ``[``: one table look-up per byte serves
#: both checks of ``_json`` (substring searches, several times cheaper than a regular
#: expression, and a count of ``[``: see bench/README.md).
_SHAPE = bytes.maketrans(b"123456789{", b"000000000[")


def _shape(text: str | bytes) -> bytes:
    """The text with ``_SHAPE`` applied. A text is looked at as UTF-8, where no other
    character holds an ASCII digit's or bracket's byte."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return raw.translate(_SHAPE)


def _brackets(shape: bytes) -> int:
    """How many opening brackets a text (its ``_shape``) holds. Counted by what deleting them
    takes away: ``bytes.count`` looks at a single byte at a time, the deletion jumps from one
    to the next (bench/README.md)."""
    return len(shape) - len(shape.replace(b"[", b""))


def _beyond_64_bits(shape: bytes) -> bool:
    """Whether a text (its ``_shape``) may hold an integer that orjson cannot."""
    return _LONG_DIGITS in shape or _LONG_NEGATIVE in shape


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether the containers of a parsed JSON value nest deeper than ``limit``: a level at a
    time, no recursion, looking at values rather than at the text, whose strings may hold
    brackets (bench/README.md)."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            inner
            for container in level
            for inner in (container.values() if type(container) is dict else container)
            if type(inner) is dict or type(inner) is list
        ]
    return False


#: Made once: ``json.loads`` with any option builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_strict_json_constant, parse_float=_finite_float)


def _refuse_lone_surrogates(value: Any) -> None:
    """Valid JSON may escape half of a UTF-16 pair (``"\\ud800"``), and some charsets
    decode to one (UTF-7), but no text can hold it: storing, rendering or sending it would
    fail later, after the sender was told 202."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None


def _json(text: str | bytes, max_depth: int | None) -> Any:
    """Strict JSON (no NaN/Infinity), refusing nesting deeper than ``max_depth``: such a
    payload is an attack on whatever walks it recursively later (templates, plugins).

    orjson parses first; what it refuses goes to the standard library, which has the last
    word and the clearer error.
    A text that may hold an integer orjson cannot (``_beyond_64_bits``) goes to the standard
    library directly: orjson would turn it into a float, losing its digits. Numbers that
    overflow to infinity and lone surrogates are refused: nothing downstream could hold them."""
    shape = _shape(text)
    try:
        if _NINETEEN_DIGITS in shape and _beyond_64_bits(shape):
            raise orjson.JSONDecodeError("may hold an integer beyond 64 bits", "", 0)
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # UnicodeDecodeError: the caller's 400
        try:
            value = _DECODER.decode(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        _refuse_lone_surrogates(value)
    # Counting opening brackets is a cheap bound: only a body with many needs measuring.
    if max_depth is not None and _brackets(shape) > max_depth and _deeper_than(value, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def parse_body(body: bytes, mime: str, charset: str | None, *, max_depth: int | None = None) -> Any:
    """The payload as templates see it: JSON as it is (also when wrapped in a form's only field
    ``payload``), other forms as a dict, text as a string. ``mime``: the media type, lower
    case (``media_and_charset``)."""
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        if not body or body.isspace():  # all whitespace, without a stripped copy
            raise Rejected(400, "empty body: expected a JSON document")
        try:
            # UTF-8 (JSON's own encoding) goes to the parser as bytes, undecoded.
            utf8 = charset is None or charset.lower() in ("utf-8", "utf8")
            return _json(body if utf8 else body.decode(charset or "utf-8"), max_depth)
        except UnicodeDecodeError as exc:
            raise Rejected(400, f"body is not valid {charset or 'utf-8'}: {exc.reason}") from exc
        except LookupError as exc:
            raise Rejected(400, f"unknown charset {charset!r}") from exc
        except ValueError as exc:
            raise Rejected(400, f"invalid JSON: {exc}") from exc
    if mime == FORM_TYPE:
        try:
            form = parse_form(body.decode(charset or "utf-8"), charset or "utf-8")
            if not _is_utf8(charset):
                _refuse_lone_surrogates(form)
        except (UnicodeDecodeError, LookupError) as exc:
            raise Rejected(400, f"form body is not valid {charset or 'utf-8'}") from exc
        except ValueError as exc:
            raise Rejected(400, f"form body: {exc}") from exc
        # A form whose one field `payload` is JSON is how GitHub and Slack send JSON as a form:
        # it is presented as that JSON, as if sent so (the raw form stays in `form`).
        if set(form) == {"payload"} and isinstance(form["payload"], str):
            # Not JSON (or nested too deeply): it stays the form it was.
            with contextlib.suppress(ValueError):
                return _json(form["payload"], max_depth)
        return form
    if mime.startswith("text/"):
        try:
            text = body.decode(charset or "utf-8")
            if not _is_utf8(charset):
                _refuse_lone_surrogates(text)
        except (UnicodeDecodeError, LookupError) as exc:
            raise Rejected(400, f"text body is not valid {charset or 'utf-8'}") from exc
        except ValueError as exc:
            raise Rejected(400, f"text body: {exc}") from exc
        return text
    if mime == "" and not body:
        return {}
    if mime == "":
        raise Rejected(415, "missing Content-Type (send application/json, a form or text)")
    raise Rejected(
        415,
        f"unsupported content type {mime!r}: send application/json, "
        "application/x-www-form-urlencoded or text/*",
    )


def _is_utf8(charset: str | None) -> bool:
    """Whether a body's ``charset`` is UTF-8 (or none, UTF-8 by default): its strict decoder
    refuses what would decode to a lone surrogate, so nothing is left to look for. Unknown
    names are not (their decoding fails first)."""
    if charset is None:
        return True
    try:
        return codecs.lookup(charset).name == "utf-8"
    except LookupError:
        return False


def header_text(value: str) -> str:
    """A header value as text that can be stored, shown and sent. aiohttp keeps bytes that
    are not UTF-8 as lone surrogates, which no text can hold; they are read as ISO-8859-1
    instead, as HTTP once defined header bytes (one character per byte: two values that
    differ stay different)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def stored_headers(headers: Mapping[str, str], drop: frozenset[str]) -> dict[str, str]:
    """Lower-cased request headers minus ``drop`` (lower-case names of credentials), each
    value as ``header_text``."""
    kept = {name: v for k, v in headers.items() if (name := k.lower()) not in drop}
    if "".join(kept.values()).isascii():  # nearly always: nothing to look at
        return kept
    return {name: v if v.isascii() else header_text(v) for name, v in kept.items()}


def parse_content(body: bytes, content_type: str, *, max_depth: int | None = None) -> Any:
    """``parse_body`` for a whole ``Content-Type`` value (``application/json; charset=…``)."""
    mime, charset = media_and_charset(content_type)
    return parse_body(body, mime, charset, max_depth=max_depth)

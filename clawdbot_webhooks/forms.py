"""Form bodies (``application/x-www-form-urlencoded``) and query strings as dicts, and the form
a stored delivery was sent as, for the ``form`` template variable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from clawdbot_webhooks.content_types import media_and_charset

FORM_TYPE = "application/x-www-form-urlencoded"


def parse_form(text: str, charset: str = "utf-8") -> dict[str, Any]:
    """Fields in order; a repeated key becomes a list, as forms send them. Percent-escapes
    are bytes of ``charset``; ones that do not decode in it raise ``UnicodeDecodeError``."""
    return fields(parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict"))


def fields(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Pairs in order as a dict, a repeated key's values as a list (a form's, a query's)."""
    form: dict[str, Any] = {}
    for key, value in pairs:
        if key in form:
            previous = form[key]
            form[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            form[key] = value
    return form


def form_of(body: bytes, content_type: str) -> dict[str, Any] | None:
    """The fields of a body sent as a form, or None for any other content type (or a form in
    a charset it does not decode in: such a body was refused when it arrived)."""
    mime, charset = media_and_charset(content_type)
    if mime != FORM_TYPE:
        return None
    try:
        return parse_form(body.decode(charset or "utf-8"), charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return None

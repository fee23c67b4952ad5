"""Form bodies (``application/x-www-form-urlencoded``) as dicts, and the form a stored delivery
was sent as, for the ``form`` template variable."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

FORM_TYPE = "application/x-www-form-urlencoded"


def parse_form(text: str) -> dict[str, Any]:
    """Fields in order; a repeated key becomes a list, as forms send them."""
    form: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in form:
            previous = form[key]
            form[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            form[key] = value
    return form


def form_of(body: bytes, content_type: str) -> dict[str, Any] | None:
    """The fields of a body sent as a form, or None for any other content type (or a form in
    a charset it does not decode in: such a body was refused when it arrived)."""
    mime, _, params = content_type.partition(";")
    if mime.strip().lower() != FORM_TYPE:
        return None
    charset = params.partition("charset=")[2].strip().strip('"') or "utf-8"
    try:
        return parse_form(body.decode(charset))
    except (UnicodeDecodeError, LookupError):
        return None

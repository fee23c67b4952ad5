"""A ``Content-Type`` value taken apart: its media type and its ``charset`` parameter."""

from __future__ import annotations


def media_and_charset(value: str) -> tuple[str, str | None]:
    """``("text/plain", "ISO-8859-1")`` of ``Text/Plain; format=flowed; Charset="ISO-8859-1"``:
    the media type lower-cased, the charset as given (None when there is none). Parameter
    names are case-insensitive and any of them may follow the charset."""
    mime, semicolon, params = value.partition(";")
    mime = mime.strip().lower()
    if not semicolon:  # the common case: no parameters at all
        return mime, None
    for param in params.split(";"):
        name, _, given = param.partition("=")
        if name.strip().lower() == "charset":
            return mime, given.strip().strip('"').strip() or None
    return mime, None

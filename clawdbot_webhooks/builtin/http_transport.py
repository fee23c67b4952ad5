"""The built-in ``http`` transport for outgoing deliveries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from clawdbot_webhooks_hookspecs import OutgoingRequest, OutgoingResponse, hookimpl

#: How much of a response body is kept with an attempt.
KEEP_BODY = 4096


class HttpTransport:
    """One ``aiohttp.ClientSession`` for every delivery of this runtime; no redirects."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=64),
                auto_decompress=True,
            )
        return self._session

    async def send(self, request: OutgoingRequest) -> OutgoingResponse:
        try:
            async with self._client().request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=request.timeout),
            ) as response:
                body = await response.content.read(KEEP_BODY)
                return OutgoingResponse(response.status, dict(response.headers), body)
        except TimeoutError:
            return OutgoingResponse(None, error=f"timed out after {request.timeout}s")
        except aiohttp.ClientError as exc:
            return OutgoingResponse(None, error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@hookimpl
def register_transports(register: Callable[[str, Any], None]) -> None:
    register("http", HttpTransport())

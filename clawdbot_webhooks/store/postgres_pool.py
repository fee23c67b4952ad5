"""Connections to PostgreSQL: an asyncpg pool on one schema, and what every PostgreSQL query
needs around it. Connection errors become ``StoreUnavailable`` (the server answers 503, the
loops retry); asyncpg's pool replaces broken connections on the next acquire, so the store
recovers by itself when the database is back."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from clawdbot_webhooks.store.protocol import StoreUnavailable, redact_url
from clawdbot_webhooks.store.queries import Query

T = TypeVar("T")

#: What "the database is not there" looks like from asyncpg: these become StoreUnavailable.
_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@functools.lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """``?`` placeholders as ``$1, $2, ...`` (the shared queries write ``?``)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


def rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``UPDATE 3`` or ``DELETE 0``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def reason(exc: BaseException) -> str:
    """An error's type and the first line of its message, for logs and ``StoreUnavailable``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_query(conn: asyncpg.Connection, query: Query[T]) -> T:
    """Run a shared query on this connection."""
    try:
        sql, args = next(query)
        while True:
            sql, args = query.send(await conn.fetch(numbered(sql), *args))
    except StopIteration as done:
        result: T = done.value
        return result


class PostgresPool:
    """An asyncpg pool whose connections work in ``schema`` (made on open when
    ``create_schema``; ``public`` without one)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None,
        pool_size: int,
        create_schema: bool,
        connect_timeout: float,
    ) -> None:
        if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise ValueError(f"storage.schema {schema!r}: use letters, digits and _")
        self.url = url
        self.schema = schema
        self.pool_size = pool_size
        self.create_schema = create_schema
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    async def open(self) -> None:
        settings = {"application_name": "clawdbot-webhooks"}
        if self.schema:
            settings["search_path"] = self.schema
        try:
            if self.schema and self.create_schema:
                # The schema must exist before the pool's connections put it on their path.
                conn = await asyncpg.connect(self.url, timeout=self.connect_timeout)
                try:
                    # Looked for first: creating one, even "IF NOT EXISTS", takes the CREATE
                    # privilege on the database, which a role given its schema may lack.
                    found = await conn.fetchval(
                        "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
                    )
                    if found is None:
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                except asyncpg.UniqueViolationError:  # another process made it just now
                    pass
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=30,
                server_settings=settings,
            )
        except _DOWN as exc:
            raise StoreUnavailable(f"cannot connect to {self.display_url}: {reason(exc)}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreUnavailable(f"cannot use {self.display_url}: {reason(exc)}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    def _query(self, query: Query[T], *, atomic: bool = False) -> Awaitable[T]:
        return self._run(functools.partial(run_query, query=query), transaction=atomic)

    async def _run(
        self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, transaction: bool = True
    ) -> T:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"{self.display_url} is closed")
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except _DOWN as exc:
            raise StoreUnavailable(f"database unavailable: {reason(exc)}") from exc

"""Batching for PostgreSQL: calls made while a transaction is on its way share the next one."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg

from clawdbot_webhooks.store.protocol import StoreUnavailable

A = TypeVar("A")
R = TypeVar("R")

#: The most calls one batch takes; the rest go in the next.
BATCH_MOST = 512


class Batches(Generic[A, R]):
    """Calls made while a transaction of earlier ones is on its way wait and share the next
    transaction: one commit for all of them, not one each. ``write`` gets their arguments and
    returns one result each, in order, as separate transactions in that order would have.
    When the database refuses a batch, each call is tried again alone, so only the one it
    refused fails; when the database cannot be reached, all of them fail at once."""

    def __init__(
        self,
        run: Callable[[Callable[[asyncpg.Connection], Awaitable[list[R]]]], Awaitable[list[R]]],
        write: Callable[[Sequence[A], asyncpg.Connection], Awaitable[list[R]]],
    ) -> None:
        self._run = run
        self._write = write
        self._queue: list[tuple[A, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, arg: A) -> R:
        return await self.submit(arg)

    def submit(self, arg: A) -> asyncio.Future[R]:
        """Queue ``arg``; the future is settled once its batch is written."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[R] = loop.create_future()
        self._queue.append((arg, result))
        if self._writer is None or self._writer.done():  # done: cancelled before it began
            # Starts on the loop's next turn, by when this turn's calls are all queued.
            self._writer = loop.create_task(self._drain())
        return result

    async def written(self) -> None:
        """Wait until everything queued so far is written (or has failed)."""
        if self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _drain(self) -> None:
        batch: list[tuple[A, asyncio.Future[R]]] = []
        try:
            while self._queue:
                # A caller cancelled while it waited wants nothing written: a row leased to
                # this process that nobody sends would let later rows of its lane overtake it.
                waiting = [call for call in self._queue if not call[1].done()]
                batch, self._queue = waiting[:BATCH_MOST], waiting[BATCH_MOST:]
                if not batch:
                    continue
                try:
                    results = await self._run(
                        functools.partial(self._write, [arg for arg, _ in batch])
                    )
                except StoreUnavailable as exc:
                    for _, future in batch:
                        _settle(future, exc)
                except Exception:
                    for arg, future in batch:
                        try:
                            [one] = await self._run(functools.partial(self._write, [arg]))
                        except Exception as exc:
                            _settle(future, exc)
                        else:
                            _settle(future, one)
                else:
                    for (_, future), one in zip(batch, results, strict=True):
                        _settle(future, one)
        finally:
            # Here, not in a done callback: a caller woken by the last batch may call again
            # before such a callback ran, and its call would wait for a writer that is gone.
            self._writer = None
            for _, future in batch:  # cancelled midway (the loop is closing)
                future.cancel()


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

"""A counting semaphore for the pipeline's concurrency limits."""

from __future__ import annotations

import asyncio
import collections


class Slots:
    """A counting semaphore, first come first served, whose uncontended ``take`` needs no
    coroutine, unlike ``asyncio.Semaphore`` (``bench/README.md``).

    ``if not slots.take(): await slots.wait()`` then ``slots.give()`` when done; or
    ``async with slots``."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> bool:
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot that ``give`` hands over."""
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.give()  # handed a slot while being cancelled: pass it on
            elif turn in self._waiters:
                self._waiters.remove(turn)
            raise

    def give(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        if not self.take():
            await self.wait()

    async def __aexit__(self, *exc: object) -> None:
        self.give()

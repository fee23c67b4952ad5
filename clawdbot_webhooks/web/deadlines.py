"""The store deadline of every webhook in flight (``incoming.storeTimeout``), watched by one
timer rather than one per request (``asyncio.timeout`` costs a timer each: bench/README.md).

Every request waits the same time, so deadlines come in the order requests do: a queue, whose
head is the next to expire. A request whose deadline comes before the last one queued (the
timeout was made shorter by a reload) gets a timer of its own."""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType


class Deadline:
    """``with deadlines.at(when):`` like ``async with asyncio.timeout_at(when):``: the task
    is cancelled at ``when`` and the block raises ``TimeoutError``. Entering and leaving
    await nothing, so a plain ``with`` does: no coroutine for either, on every webhook."""

    __slots__ = ("_cancelling", "_deadlines", "expired", "task", "when")

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        self._deadlines = deadlines
        self.when = when
        self._cancelling = 0
        self.expired = False
        #: The task to cancel at the deadline; None once the block is left.
        self.task: asyncio.Task[object] | None = None

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._deadlines.loop)
        assert task is not None  # entered from a task
        self.task = task
        self._cancelling = task.cancelling()
        self._deadlines.watch(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self.task = self.task, None
        if self.expired and task is not None:
            cancels = task.uncancel()  # ours taken back whatever the block raised
            if cancels <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


class Deadlines:
    def __init__(self) -> None:
        self._queue: collections.deque[Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def time(self) -> float:
        """The loop's clock, which deadlines are given in."""
        return self.loop.time()

    def at(self, when: float) -> Deadline:
        return Deadline(self, when)

    def watch(self, deadline: Deadline) -> None:
        when = deadline.when
        queue = self._queue
        while queue and queue[0].task is None:  # left already: most requests, in order
            queue.popleft()
        if when < self._last:
            self.loop.call_at(when, _expire, deadline)
            return
        self._last = when
        queue.append(deadline)
        if self._timer is None:
            self._timer = self.loop.call_at(when, self._sweep, when)

    def _sweep(self, when: float) -> None:
        self._timer = None
        queue = self._queue
        now = self.loop.time()
        while queue:
            head = queue[0]
            if head.task is not None:
                if head.when > now:
                    self._timer = self.loop.call_at(head.when, self._sweep, head.when)
                    return
                _expire(head)
            queue.popleft()


def _expire(deadline: Deadline) -> None:
    if deadline.task is not None and not deadline.expired:
        deadline.expired = True
        deadline.task.cancel()

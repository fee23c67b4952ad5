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
    """``with Deadline(deadlines, seconds):`` like ``async with asyncio.timeout(seconds):``:
    the task is cancelled ``seconds`` after entering and the block raises ``TimeoutError``.
    Entering and leaving await nothing, so a plain ``with`` does: no coroutine for either,
    and no call beyond the three the statement makes, on every webhook."""

    __slots__ = ("_cancelling", "_deadlines", "expired", "seconds", "task", "when")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self.seconds = seconds
        self.when = 0.0  # on the loop's clock, set on entering
        self._cancelling = 0
        self.expired = False
        #: The task to cancel at the deadline; None once the block is left.
        self.task: asyncio.Task[object] | None = None

    def __enter__(self) -> Deadline:
        deadlines = self._deadlines
        loop = deadlines.loop
        if loop is None:
            loop = deadlines.loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None  # entered from a task
        self.task = task
        self._cancelling = task.cancelling()
        self.when = when = loop.time() + self.seconds
        queue = deadlines.queue
        while queue and queue[0].task is None:  # left already: most requests, in order
            queue.popleft()
        if when < deadlines.last:  # a shorter timeout than the requests before (a reload)
            loop.call_at(when, _expire, self)
            return self
        deadlines.last = when
        queue.append(self)
        if deadlines.timer is None:
            deadlines.timer = loop.call_at(when, deadlines.sweep, when)
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

    def left(self) -> float:
        """Seconds until the deadline, once entered."""
        loop = self._deadlines.loop
        assert loop is not None  # set on entering
        return self.when - loop.time()


class Deadlines:
    """The deadlines of one event loop: a queue in the order they expire, swept by one
    timer."""

    def __init__(self) -> None:
        self.queue: collections.deque[Deadline] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.last = 0.0
        #: The loop the deadlines are on, kept from the first one entered.
        self.loop: asyncio.AbstractEventLoop | None = None

    def sweep(self, when: float) -> None:
        self.timer = None
        queue, loop = self.queue, self.loop
        assert loop is not None  # a timer of the loop called this
        now = loop.time()
        while queue:
            head = queue[0]
            if head.task is not None:
                if head.when > now:
                    self.timer = loop.call_at(head.when, self.sweep, head.when)
                    return
                _expire(head)
            queue.popleft()


def _expire(deadline: Deadline) -> None:
    if deadline.task is not None and not deadline.expired:
        deadline.expired = True
        deadline.task.cancel()

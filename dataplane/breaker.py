"""Knative's breaker: bounded concurrency plus a bounded FIFO queue (reference §3.1, §5.8).

The queue-proxy puts one in front of its model server (CC in flight, 10×CC waiting); the
activator has one per revision and one per pod tracker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class QueueFullError(Exception):
    """No pending slot is free: the request is refused at once (503)."""

    def __init__(self) -> None:
        super().__init__("pending request queue full")


class Semaphore:
    """A FIFO semaphore whose capacity can change while requests wait (Knative's ``semaphore``)."""

    __slots__ = ("_active", "_capacity", "_waiters")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        if self._active < self._capacity and not self._waiters:
            self._active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the token was handed over as we were cancelled: give it back
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        if self._active <= 0:
            raise RuntimeError("semaphore released more often than acquired")
        self._active -= 1
        self._wake()

    def update_capacity(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity = {capacity}: must be >= 0")
        self._capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._active < self._capacity:
            fut = self._waiters.popleft()
            if not fut.done():
                self._active += 1  # hand the token to the waiter
                fut.set_result(None)


class Breaker:
    """At most ``capacity`` requests run; up to ``queue_depth`` more wait in arrival order.

    ``total slots = queue_depth + max_concurrency``: CC=1 → 1 running + 10 waiting, the 12th is
    refused with :class:`QueueFullError` at once (tests/test_breaker.py).
    """

    __slots__ = ("_in_flight", "_max_concurrency", "_queue_depth", "_sem", "_total_slots")

    def __init__(self, *, queue_depth: int, max_concurrency: int, initial_capacity: int) -> None:
        if queue_depth <= 0:
            raise ValueError(f"queue_depth = {queue_depth}: must be > 0")
        if max_concurrency < 0:
            raise ValueError(f"max_concurrency = {max_concurrency}: must be >= 0")
        if not 0 <= initial_capacity <= max_concurrency:
            raise ValueError(
                f"initial_capacity = {initial_capacity}: must be within [0, {max_concurrency}]"
            )
        self._queue_depth = queue_depth
        self._max_concurrency = max_concurrency
        self._total_slots = queue_depth + max_concurrency
        self._in_flight = 0
        self._sem = Semaphore(initial_capacity)

    @property
    def capacity(self) -> int:
        return self._sem.capacity

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def in_flight(self) -> int:
        """Pending plus active requests (Knative's ``kn.serving.queue.depth``)."""
        return self._in_flight

    @property
    def active(self) -> int:
        return self._sem.active

    @property
    def waiting(self) -> int:
        return self._in_flight - self._sem.active

    @asynccontextmanager
    async def maybe(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; raises QueueFullError at once if full."""
        if self._in_flight >= self._total_slots:
            raise QueueFullError
        self._in_flight += 1
        try:
            await self._sem.acquire()
        except BaseException:
            self._in_flight -= 1
            raise
        try:
            yield
        finally:
            self._sem.release()
            self._in_flight -= 1

    def reserve(self) -> Callable[[], None] | None:
        """Take a slot only if it is free now; returns the function that releases it, or None."""
        if self._in_flight >= self._total_slots or not self._sem.try_acquire():
            return None
        self._in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._sem.release()
            self._in_flight -= 1

        return release

    def update_concurrency(self, capacity: int) -> None:
        """Set how many may run at once (the activator does so as pods come and go)."""
        self._sem.update_capacity(capacity)

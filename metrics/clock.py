"""The clock protocol that loops read time through, so tests can drive time themselves."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds for durations, and unix seconds for stamps that cross processes."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class LoopClock:
    """The real clock: the running loop's time (monotonic) and ``time.time()`` for stamps."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

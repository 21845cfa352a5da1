"""Many request deadlines on one event-loop timer.

A proxy arms a total (and a response-start) timeout for every request and cancels it a few
milliseconds later. A ``TimerHandle`` each costs a few microseconds per request; here a
deadline is a dict entry in a bucket of ``resolution_s`` and one timer waits for the earliest
bucket that still holds one. A deadline fires at most ``resolution_s`` (plus the loop's own
timer granularity) late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Protocol


class Expiring(Protocol):
    """What a deadline calls: ``expire(kind)`` with the kind it was added with."""

    def expire(self, kind: str) -> None: ...


class Deadlines:
    """Deadlines to a resolution, on one ``call_at`` timer of ``loop``.

    ``add(when, entry, kind)`` returns a key; ``remove(key, entry)`` forgets the deadline (an
    entry has at most one deadline per kind in one bucket: add it again after removing).
    """

    __slots__ = ("_armed", "_buckets", "_handle", "_heap", "_loop", "_per_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution_s: float = 0.01) -> None:
        if resolution_s <= 0:
            raise ValueError(f"resolution_s = {resolution_s}: must be > 0")
        self._loop = loop
        self._per_s = 1.0 / resolution_s
        self._buckets: dict[int, dict[tuple[Expiring, str], None]] = {}
        # bucket keys, some of them gone (dropped when on top, or all at once when they outnumber
        # the live buckets)
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0  # the bucket the timer waits for

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, when: float, entry: Expiring, kind: str) -> int:
        key = int(when * self._per_s) + 1  # the first bucket boundary after ``when``
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            heap = self._heap
            heapq.heappush(heap, key)
            if len(heap) > 2 * len(self._buckets) + 64:
                self._heap = sorted(self._buckets)  # drop the keys of emptied buckets
            if self._handle is None or key < self._armed:
                self._arm(key)
        bucket[(entry, kind)] = None
        return key

    def remove(self, key: int, entry: Expiring, kind: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pop((entry, kind), None)
            if not bucket:
                # Most requests end long before their deadline (a 300 s timeout, 100 new buckets
                # a second): an emptied bucket kept until due would hold memory for minutes.
                del self._buckets[key]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._buckets.clear()
        self._heap.clear()

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = key
        self._handle = self._loop.call_at(key / self._per_s, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time() * self._per_s
        heap, buckets = self._heap, self._buckets
        due: list[tuple[Expiring, str]] = []
        while heap:
            key = heap[0]
            bucket = buckets.get(key)
            if key <= now:
                heapq.heappop(heap)
                if bucket is not None:
                    del buckets[key]
                    due.extend(bucket)
            elif not bucket:  # a future bucket emptied by removals: forget it
                heapq.heappop(heap)
                buckets.pop(key, None)
            else:
                break
        if heap:
            self._arm(heap[0])
        for entry, kind in due:
            entry.expire(kind)

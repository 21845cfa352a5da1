"""Many request deadlines on one event-loop timer.

A proxy arms a total (and a response-start) timeout for every request and cancels it a few
milliseconds later. A ``TimerHandle`` each costs a few microseconds per request; here a
deadline is a link in a queue, one queue per duration, and one timer waits for the earliest.

Deadlines of one duration come due in the order they were added (``start + duration``, and
``start`` is the loop's clock as the request goes), so a queue is a list in time order that
grows at its tail and loses its links wherever requests end: adding and removing one costs a
few pointer moves, and nothing is allocated but the entry's :class:`Deadline`, which it keeps.
A request that started earlier than the last one added (it waited, then went on) is put in its
place from the tail. The timer is not moved when its deadline is removed: it fires, finds
nothing due, and waits for the earliest deadline left (if any). A deadline fires at most
``resolution_s`` (plus the loop's own timer granularity) late, never early.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol


class Expiring(Protocol):
    """What a deadline calls: ``expire(kind)`` with the kind of its :class:`Deadline`."""

    def expire(self, kind: str) -> None: ...


class Deadline:
    """One deadline of ``entry`` (it keeps one per kind and adds it again after a removal):
    a link of its queue in :class:`Deadlines` while armed."""

    __slots__ = ("_next", "_prev", "entry", "kind", "queue", "when")

    def __init__(self, entry: Expiring, kind: str) -> None:
        self.entry = entry
        self.kind = kind
        self.when = 0.0
        self._next: Deadline | None = None
        self._prev: Deadline | None = None
        self.queue: _Queue | None = None  # while armed: the queue it is in


def new_deadline(entry: Expiring, kind: str) -> Deadline:
    """``Deadline(entry, kind)``, made without a Python-level call when compiled."""
    d = Deadline.__new__(Deadline)
    d.entry = entry
    d.kind = kind
    d.when = 0.0
    d._next = d._prev = None
    d.queue = None
    return d


class _Queue:
    """The armed deadlines of one duration, earliest first."""

    __slots__ = ("head", "tail")

    def __init__(self) -> None:
        self.head: Deadline | None = None
        self.tail: Deadline | None = None


_MAX_QUEUES = 64  # durations come from configuration: a few; empty queues beyond are dropped


class Deadlines:
    """Deadlines to a resolution, on one ``call_at`` timer of ``loop``.

    ``add(deadline, start, duration)`` arms a :class:`Deadline` for ``start + duration``;
    ``remove(deadline)`` disarms it (nothing happens if it is not armed).
    """

    __slots__ = (
        "_armed",
        "_count",
        "_handle",
        "_last_duration",
        "_last_queue",
        "_loop",
        "_per_s",
        "_queues",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution_s: float = 0.01) -> None:
        if resolution_s <= 0:
            raise ValueError(f"resolution_s = {resolution_s}: must be > 0")
        self._loop = loop
        self._per_s = 1.0 / resolution_s
        self._queues: dict[float, _Queue] = {}
        # the queue of the duration added last, and that duration: a proxy adds one or two
        # durations over and over, and a float key's hash and lookup cost more than a compare
        self._last_queue: _Queue | None = None
        self._last_duration = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when the timer fires
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, d: Deadline, start: float, duration: float) -> None:
        if d.queue is not None:
            self.remove(d)
        q = self._last_queue
        if q is None or duration != self._last_duration:
            q = self._queues.get(duration)
            if q is None:
                if len(self._queues) >= _MAX_QUEUES:
                    self._queues = {k: v for k, v in self._queues.items() if v.head is not None}
                q = self._queues[duration] = _Queue()
            self._last_queue = q  # (in the dict: the dict drops a queue only when it is new)
            self._last_duration = duration
        when = start + duration
        d.when = when
        d.queue = q
        after = q.tail
        while after is not None and after.when > when:  # (one that started earlier: rare)
            after = after._prev
        following = q.head if after is None else after._next
        d._prev = after
        d._next = following
        if following is None:
            q.tail = d
        else:
            following._prev = d
        if after is not None:
            after._next = d
        else:  # the queue's earliest
            q.head = d
            if self._handle is None or when < self._armed:
                self._arm(when)
        self._count += 1

    def remove(self, d: Deadline) -> None:
        q = d.queue
        if q is None:
            return
        before = d._prev
        following = d._next
        if before is None:
            q.head = following
        else:
            before._next = following
        if following is None:
            q.tail = before
        else:
            following._prev = before
        d._prev = d._next = None
        d.queue = None
        self._count -= 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for q in self._queues.values():
            while q.head is not None:
                self.remove(q.head)
        self._queues.clear()
        self._last_queue = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        # on the resolution's grid: deadlines close together fire together
        self._armed = math.ceil(when * self._per_s) / self._per_s
        self._handle = self._loop.call_at(self._armed, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        due: list[Deadline] = []
        earliest = math.inf
        for q in self._queues.values():
            d = q.head
            while d is not None and d.when <= now:
                self.remove(d)
                due.append(d)
                d = q.head
            if d is not None and d.when < earliest:
                earliest = d.when
        if earliest < math.inf:
            self._arm(earliest)
        for d in due:
            d.entry.expire(d.kind)

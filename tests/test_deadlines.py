"""The deadline queues behind the core's total and response-start timeouts."""

from __future__ import annotations

import asyncio

import pytest

from dataplane.deadlines import Deadline, Deadlines


class Recorder:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fired: list[tuple[str, float]] = []

    def expire(self, kind: str) -> None:
        self.fired.append((kind, self.loop.time()))


async def test_fires_never_early_and_within_the_resolution() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    a, b = Recorder(loop), Recorder(loop)
    t0 = loop.time()
    d.add(Deadline(a, "total"), t0, 0.10)
    d.add(Deadline(b, "response-start"), t0, 0.05)  # earlier than the armed timer: re-armed
    await asyncio.sleep(0.2)
    assert [k for k, _ in b.fired] == ["response-start"]
    assert [k for k, _ in a.fired] == ["total"]
    for rec, due in ((a, t0 + 0.10), (b, t0 + 0.05)):
        at = rec.fired[0][1]
        assert at >= due
        assert at < due + 0.05  # resolution plus timer granularity and a loaded machine
    assert len(d) == 0


async def test_removed_deadlines_do_not_fire() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    entries = [Recorder(loop) for _ in range(100)]
    deadlines = [Deadline(e, "total") for e in entries]
    for dl in deadlines:
        d.add(dl, loop.time(), 0.03)
    for dl in deadlines[:99:2] + deadlines[1:99:2]:  # out of order: from the middle too
        d.remove(dl)
        assert dl.queue is None
    d.remove(deadlines[0])  # removing a disarmed one does nothing
    assert len(d) == 1
    await asyncio.sleep(0.1)
    assert all(not e.fired for e in entries[:99])
    assert [k for k, _ in entries[99].fired] == ["total"]
    assert deadlines[99].queue is None


async def test_one_entry_two_kinds() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    e = Recorder(loop)
    start, total = Deadline(e, "response-start"), Deadline(e, "total")
    d.add(start, loop.time(), 0.02)
    d.add(total, loop.time(), 0.02)
    d.remove(start)
    await asyncio.sleep(0.08)
    assert [k for k, _ in e.fired] == ["total"]


async def test_a_request_that_started_earlier_fires_first() -> None:
    """A request that waited (breaker, pipelining) is added after later ones but started
    before them: its deadline must not wait behind theirs."""
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    late, early = Recorder(loop), Recorder(loop)
    now = loop.time()
    d.add(Deadline(late, "total"), now, 0.3)
    d.add(Deadline(early, "total"), now - 0.25, 0.3)  # due in 0.05 s
    await asyncio.sleep(0.15)
    assert [k for k, _ in early.fired] == ["total"]
    assert not late.fired
    assert len(d) == 1


async def test_adding_an_armed_deadline_moves_it() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    e = Recorder(loop)
    dl = Deadline(e, "total")
    d.add(dl, loop.time(), 0.02)
    d.add(dl, loop.time(), 10.0)  # e.g. a retry arms it again
    assert len(d) == 1
    await asyncio.sleep(0.08)
    assert not e.fired


class CountingDeadlines(Deadlines):
    __slots__ = ("fires",)

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution_s: float) -> None:
        super().__init__(loop, resolution_s)
        self.fires = 0

    def _fire(self) -> None:
        self.fires += 1
        super()._fire()


async def test_removed_deadlines_leave_no_timer_behind() -> None:
    """Requests that finish long before their deadline: the timer must not keep waking up
    for them."""
    loop = asyncio.get_running_loop()
    d = CountingDeadlines(loop, resolution_s=0.01)
    e = Recorder(loop)
    for i in range(50):  # 50 deadlines, each removed at once
        dl = Deadline(e, "total")
        d.add(dl, loop.time(), 0.01 + i * 0.01)
        d.remove(dl)
    await asyncio.sleep(0.7)
    assert d.fires == 1  # the first armed time fires once, finds nothing left, stops
    assert d._handle is None
    assert not e.fired


async def test_the_timer_follows_the_earliest_deadline_left() -> None:
    loop = asyncio.get_running_loop()
    d = CountingDeadlines(loop, resolution_s=0.01)
    first, second = Recorder(loop), Recorder(loop)
    dl = Deadline(first, "total")
    d.add(dl, loop.time(), 0.02)
    d.add(Deadline(second, "total"), loop.time(), 0.1)
    d.remove(dl)
    await asyncio.sleep(0.2)
    assert not first.fired
    assert [k for k, _ in second.fired] == ["total"]
    assert d.fires == 2  # the removed one's time, then the one left


async def test_memory_follows_the_live_deadlines_not_the_ended_ones() -> None:
    """Requests with a 300 s timeout that end within milliseconds: nothing is kept for them
    once removed, and durations from configuration make a few queues."""
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    e, live = Recorder(loop), Recorder(loop)
    now = loop.time()
    d.add(Deadline(live, "total"), now, 300)  # one request still in flight
    for i in range(20_000):  # one request a millisecond, each added and removed
        dl = Deadline(e, "total")
        d.add(dl, now + i * 0.001, 300 if i % 2 else 30)
        d.remove(dl)
    assert len(d) == 1
    assert len(d._queues) == 2
    for i in range(200):  # many durations: empty queues are dropped past a bound
        dl = Deadline(e, "total")
        d.add(dl, now, 1.0 + i)
        d.remove(dl)
    assert len(d._queues) <= 65
    assert len(d) == 1


async def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="resolution_s = 0"):
        Deadlines(asyncio.get_running_loop(), resolution_s=0)


async def test_alternating_durations_and_dropped_queues_keep_every_deadline() -> None:
    """The queue of the duration added last is reused without a lookup; a duration's queue
    dropped while empty (past the queue limit) is made again, and the deadlines of every
    duration still fire, each in its own queue's order."""
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    rec = Recorder(loop)
    t0 = loop.time()
    # more durations than the queue limit (64), each emptied at once: the dict drops them
    for i in range(70):
        gone = Deadline(rec, f"gone-{i}")
        d.add(gone, t0, 10.0 + i)
        d.remove(gone)
    short, long_, short2 = Deadline(rec, "a"), Deadline(rec, "b"), Deadline(rec, "c")
    d.add(short, t0, 0.05)
    d.add(long_, t0, 0.08)
    d.add(short2, t0 + 0.01, 0.05)  # back to the first duration: a lookup again
    assert len(d) == 3
    await asyncio.sleep(0.2)
    assert [k for k, _ in rec.fired] == ["a", "c", "b"]
    assert len(d) == 0

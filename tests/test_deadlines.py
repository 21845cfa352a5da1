"""The deadline wheel behind the core's total and response-start timeouts."""

from __future__ import annotations

import asyncio

import pytest

from dataplane.deadlines import Deadlines


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
    d.add(t0 + 0.10, a, "total")
    d.add(t0 + 0.05, b, "response-start")  # earlier than the armed bucket: re-armed
    await asyncio.sleep(0.2)
    assert [k for k, _ in b.fired] == ["response-start"]
    assert [k for k, _ in a.fired] == ["total"]
    for rec, due in ((a, t0 + 0.10), (b, t0 + 0.05)):
        at = rec.fired[0][1]
        assert at >= due
        assert at < due + 0.05  # resolution plus timer granularity and a loaded machine
    assert len(d) == 0


async def test_removed_deadlines_do_not_fire_and_free_their_bucket() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    entries = [Recorder(loop) for _ in range(100)]
    keys = [d.add(loop.time() + 0.03, e, "total") for e in entries]
    for key, e in zip(keys[:99], entries[:99], strict=True):
        d.remove(key, e, "total")
    assert len(d) == 1
    await asyncio.sleep(0.1)
    assert all(not e.fired for e in entries[:99])
    assert [k for k, _ in entries[99].fired] == ["total"]


async def test_one_entry_two_kinds() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    e = Recorder(loop)
    k1 = d.add(loop.time() + 0.02, e, "response-start")
    d.add(loop.time() + 0.02, e, "total")  # same bucket, another kind
    d.remove(k1, e, "response-start")
    await asyncio.sleep(0.08)
    assert [k for k, _ in e.fired] == ["total"]


class CountingDeadlines(Deadlines):
    __slots__ = ("fires",)

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution_s: float) -> None:
        super().__init__(loop, resolution_s)
        self.fires = 0

    def _fire(self) -> None:
        self.fires += 1
        super()._fire()


async def test_emptied_future_buckets_leave_no_timer_behind() -> None:
    """Requests that finish long before their deadline: the wheel must not keep waking up for
    them, nor keep their buckets."""
    loop = asyncio.get_running_loop()
    d = CountingDeadlines(loop, resolution_s=0.01)
    e = Recorder(loop)
    for i in range(50):  # 50 buckets, each emptied at once
        key = d.add(loop.time() + 0.01 + i * 0.01, e, "total")
        d.remove(key, e, "total")
    await asyncio.sleep(0.7)
    assert d.fires == 1  # the first armed bucket fires once, finds them all empty, stops
    assert d._buckets == {}
    assert d._handle is None
    assert not e.fired


async def test_memory_follows_the_live_deadlines_not_the_ended_ones() -> None:
    """Requests with a 300 s timeout that end within milliseconds, spread over 20 s of clock:
    nothing is kept for them once removed (no emptied bucket waits 300 s to be dropped)."""
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, resolution_s=0.01)
    e, live = Recorder(loop), Recorder(loop)
    now = loop.time()
    d.add(now + 300, live, "total")  # one request still in flight
    for i in range(20_000):  # one request a millisecond, each added and removed
        key = d.add(now + i * 0.001 + 300, e, "total")
        d.remove(key, e, "total")
    assert len(d) == 1
    assert len(d._buckets) == 1
    assert len(d._heap) <= 2 * len(d._buckets) + 64


async def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="resolution_s = 0"):
        Deadlines(asyncio.get_running_loop(), resolution_s=0)

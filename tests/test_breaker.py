"""Knative's breaker vectors (reference §5.8, ``pkg/queue/breaker_test.go``), ported by name."""

from __future__ import annotations

import asyncio

import pytest

from dataplane.breaker import Breaker, QueueFullError, Semaphore


async def _hold(
    breaker: Breaker, release: asyncio.Event, entered: asyncio.Event | None = None
) -> str:
    async with breaker.maybe():
        if entered is not None:
            entered.set()
        await release.wait()
    return "ok"


async def _settle() -> None:
    """Let every ready task run until they all block (no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("queue_depth", "max_concurrency", "initial_capacity"),
    [
        pytest.param(0, 1, 1, id="zero-queue-depth"),
        pytest.param(1, -1, 1, id="negative-max-concurrency"),
        pytest.param(1, 1, -1, id="negative-initial-capacity"),
        pytest.param(1, 5, 6, id="initial-above-max"),
    ],
)
def test_constructor_rejects(queue_depth: int, max_concurrency: int, initial_capacity: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Breaker(
            queue_depth=queue_depth,
            max_concurrency=max_concurrency,
            initial_capacity=initial_capacity,
        )


async def test_overload() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=1)
    release = asyncio.Event()
    entered = asyncio.Event()
    first = asyncio.create_task(_hold(b, release, entered))
    await entered.wait()
    second = asyncio.create_task(_hold(b, release))
    await _settle()
    assert (b.in_flight, b.active, b.waiting) == (2, 1, 1)
    with pytest.raises(QueueFullError, match="pending request queue full"):
        async with b.maybe():
            pytest.fail("a third request must not be admitted")
    release.set()
    assert [await first, await second] == ["ok", "ok"]
    assert b.in_flight == 0


def test_reserve_overload() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=1)
    release = b.reserve()
    assert release is not None
    assert b.reserve() is None
    release()
    release()  # idempotent: the second call gives nothing back twice
    assert b.in_flight == 0
    again = b.reserve()
    assert again is not None
    again()


async def test_overload_mixed() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=1)
    release = asyncio.Event()
    entered = asyncio.Event()
    task = asyncio.create_task(_hold(b, release, entered))
    await entered.wait()
    assert b.reserve() is None
    release.set()
    await task
    reserved = b.reserve()
    assert reserved is not None
    reserved()


async def test_queueing() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=0)
    release = asyncio.Event()
    release.set()
    tasks = [asyncio.create_task(_hold(b, release)) for _ in range(2)]
    await _settle()
    assert not any(t.done() for t in tasks)
    assert b.waiting == 2
    b.update_concurrency(1)
    assert await asyncio.gather(*tasks) == ["ok", "ok"]


async def test_no_overload() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=1)
    events = [asyncio.Event() for _ in range(4)]
    tasks = [asyncio.create_task(_hold(b, events[i])) for i in range(2)]
    await _settle()
    for i in range(2):
        events[i].set()
        await tasks[i]
        tasks.append(asyncio.create_task(_hold(b, events[i + 2])))
        await _settle()
    events[2].set()
    events[3].set()
    assert await asyncio.gather(*tasks) == ["ok"] * 4


async def test_cancel() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=0)
    release = asyncio.Event()
    waiting = asyncio.create_task(_hold(b, release))
    await _settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert b.in_flight == 0
    b.update_concurrency(1)
    entered = asyncio.Event()
    active = asyncio.create_task(_hold(b, release, entered))
    await entered.wait()
    queued = asyncio.create_task(_hold(b, release))
    await _settle()
    with pytest.raises(QueueFullError):
        async with b.maybe():
            pytest.fail("queue is full")
    release.set()
    assert [await active, await queued] == ["ok", "ok"]
    assert (b.in_flight, b.active) == (0, 0)


async def test_cancel_after_token_handed_over_gives_it_back() -> None:
    b = Breaker(queue_depth=2, max_concurrency=1, initial_capacity=0)
    release = asyncio.Event()
    waiting = asyncio.create_task(_hold(b, release))
    await _settle()
    b.update_concurrency(1)  # hands the token to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (b.in_flight, b.active) == (0, 0)
    reserved = b.reserve()
    assert reserved is not None
    reserved()


def test_update_concurrency() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1, initial_capacity=0)
    b.update_concurrency(1)
    assert b.capacity == 1
    b.update_concurrency(0)
    assert b.capacity == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        b.update_concurrency(-1)


async def test_semaphore_update_capacity() -> None:
    sem = Semaphore(1)
    assert sem.capacity == 1
    await sem.acquire()
    sem.update_capacity(3)
    assert sem.capacity == 3
    assert sem.active == 1


async def test_semaphore_release() -> None:
    sem = Semaphore(1)
    await sem.acquire()
    sem.release()
    with pytest.raises(RuntimeError, match="released more often"):
        sem.release()


async def test_queue_proxy_sizes_cc1_admits_eleven() -> None:
    """CC=1 → 1 active + 10 queued; the 12th is refused at once (the issue's vector)."""
    b = Breaker(queue_depth=10, max_concurrency=1, initial_capacity=1)
    release = asyncio.Event()
    tasks = [asyncio.create_task(_hold(b, release)) for _ in range(11)]
    await _settle()
    assert b.in_flight == 11
    with pytest.raises(QueueFullError):
        async with b.maybe():
            pytest.fail("the 12th must be refused")
    release.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 11

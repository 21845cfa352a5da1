"""Throttler, capacity and load balancing: Knative's vectors (reference §5.9) and behaviours."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest

from activator.capacity import (
    MAX_INT32,
    assign_slice,
    calculate_capacity,
    infer_index,
    pick_indices,
)
from activator.lb import PodTracker, RandomChoice2, RoundRobin, first_available, policy_for
from activator.throttler import (
    PeerInfo,
    QueueFullError,
    RevisionThrottler,
    Throttler,
    WaitTimeoutError,
)
from cluster.spec import Revision, RevisionKey

KEY = RevisionKey("default", "iris-v1")


def throttler(
    cc: int, *, peers: PeerInfo | None = None, queue_depth: int = 10_000
) -> RevisionThrottler:
    return RevisionThrottler(
        KEY, cc, rng=random.Random(7), peers=peers or PeerInfo(), queue_depth=queue_depth
    )


# --- §5.9 updateCapacity table ---------------------------------------------------------------


def update_capacity(cc: int, backends: int, num_act: int, idx: int, trackers: int) -> int:
    """Knative's test harness: assigned trackers → calculateCapacity → the breaker's capacity."""
    dests = [f"10.0.0.{i}:8012" for i in range(trackers)]
    assigned = assign_slice(dests, idx, num_act) if cc > 0 else dests
    backend_count = trackers if backends < 0 else backends
    cap = calculate_capacity(cc, backend_count, len(assigned), num_act)
    if cc == 0:
        return 1 if cap > 0 else 0  # the infinite breaker
    return cap


@pytest.mark.parametrize(
    ("cc", "backends", "num_act", "idx", "trackers", "want"),
    [
        pytest.param(10, 1, 0, 0, 0, 10, id="single-backend"),
        pytest.param(10, 10, 0, -1, 0, 100, id="ten-backends"),
        pytest.param(10, 100, 0, -1, 0, 1000, id="hundred-backends"),
        pytest.param(10, 10, 5, -1, 0, 20, id="five-activators"),
        pytest.param(10, 10, 200, -1, 0, 1, id="many-activators-at-least-one"),
        pytest.param(10, 0, 200, -1, 0, 0, id="no-backends"),
        pytest.param(0, 0, 0, -1, 0, 0, id="infinite-no-backends"),
        pytest.param(0, 1, 0, -1, 0, 1, id="infinite-one-backend"),
        pytest.param(0, 10, 0, -1, 0, 1, id="infinite-ten-backends"),
        pytest.param(0, 0, 200, -1, 0, 0, id="infinite-no-backends-many-activators"),
        pytest.param(0, 1, 200, -1, 0, 1, id="infinite-one-backend-many-activators"),
        pytest.param(10, 0, 1, 0, 1, 10, id="one-tracker"),
        pytest.param(10, -1, 1, 0, 2, 20, id="two-trackers-one-activator"),
        pytest.param(10, -1, 2, 0, 2, 10, id="two-trackers-two-activators"),
        pytest.param(10, -1, 2, 0, 3, 20, id="three-trackers-index-0-gets-remnant"),
        pytest.param(10, -1, 2, 1, 3, 10, id="three-trackers-index-1"),
        pytest.param(1, 5, 2, 0, 5, 3, id="cc1-five-trackers-index-0"),
        pytest.param(1, 5, 2, 1, 5, 2, id="cc1-five-trackers-index-1"),
        pytest.param(0, 1, 2, 1, 3, 1, id="infinite-with-trackers"),
    ],
)
def test_update_capacity_vectors(
    cc: int, backends: int, num_act: int, idx: int, trackers: int, want: int
) -> None:
    assert update_capacity(cc, backends, num_act, idx, trackers) == want


def test_calculate_capacity_clamps_to_max_int32() -> None:
    assert calculate_capacity(0, 1, MAX_INT32 + 5, 1) == MAX_INT32


@pytest.mark.parametrize(
    ("pods", "idx", "acts", "want"),
    [
        pytest.param(1, 0, 1, (0, 1, 0), id="1-0-1"),
        pytest.param(1, 0, 2, (0, 1, 0), id="1-0-2"),
        pytest.param(1, 1, 2, (0, 1, 0), id="1-1-2"),
        pytest.param(2, 1, 3, (1, 2, 0), id="2-1-3"),
        pytest.param(2, 2, 3, (0, 1, 0), id="2-2-3"),
        pytest.param(3, 2, 3, (2, 3, 0), id="3-2-3"),
        pytest.param(10, 0, 3, (0, 3, 1), id="10-0-3"),
        pytest.param(10, 1, 3, (3, 6, 1), id="10-1-3"),
        pytest.param(10, 2, 3, (6, 9, 1), id="10-2-3"),
        pytest.param(150, 0, 5, (0, 30, 0), id="150-0-5"),
        pytest.param(150, 1, 5, (30, 60, 0), id="150-1-5"),
        pytest.param(150, 4, 5, (120, 150, 0), id="150-4-5"),
    ],
)
def test_pick_indices(pods: int, idx: int, acts: int, want: tuple[int, int, int]) -> None:
    assert pick_indices(pods, idx, acts) == want


@pytest.mark.parametrize(
    ("trackers", "idx", "num_act", "want"),
    [
        pytest.param(["1", "2", "3"], 1, 1, ["1", "2", "3"], id="one-activator"),
        pytest.param(["1", "2", "3"], -1, 1, ["1", "2", "3"], id="unknown-index"),
        pytest.param(["1", "2", "3"], 1, 3, ["2"], id="three-activators"),
        pytest.param(["1", "2", "3"], 1, 2, ["2"], id="two-activators"),
        pytest.param(["1"], 1, 3, ["1"], id="single-tracker"),
        pytest.param([], 1, 3, [], id="empty"),
    ],
)
def test_assign_slice(trackers: list[str], idx: int, num_act: int, want: list[str]) -> None:
    assert assign_slice(trackers, idx, num_act) == want


@pytest.mark.parametrize(
    ("ips", "want"),
    [
        pytest.param([], -1, id="empty"),
        pytest.param(["11.11.11.11", "11.11.11.12"], -1, id="absent"),
        pytest.param(["10.10.10.3", "11.11.11.11"], 0, id="first"),
        pytest.param(["10.10.10.1", "10.10.10.2", "10.10.10.3", "11.11.11.11"], 2, id="middle"),
        pytest.param(["10.10.10.1", "10.10.10.2", "10.10.10.3"], 2, id="last"),
    ],
)
def test_infer_index(ips: list[str], want: int) -> None:
    assert infer_index(ips, "10.10.10.3") == want


def test_pod_assignment_finite() -> None:
    rt = throttler(42, peers=PeerInfo(count=4, index=0))
    rt.update_addresses(f"ip{i}" for i in range(6))
    assert {t.address for t in rt.assigned()} == {"ip0", "ip4"}
    assert rt.capacity == 84
    assert all(t.capacity == 42 for t in rt.assigned())
    rt.update_addresses([])
    assert rt.capacity == 0
    assert rt.assigned() == []


def test_pod_assignment_infinite() -> None:
    rt = throttler(0, peers=PeerInfo(count=2, index=1))
    rt.update_addresses(["ip1", "ip2", "ip3"])
    assert len(rt.assigned()) == 3
    assert rt.capacity == 1
    assert all(t.capacity == 0 for t in rt.assigned())  # unbounded
    rt.update_addresses([])
    assert rt.capacity == 0


# --- load balancing --------------------------------------------------------------------------


def trackers(cc: int, addresses: list[str]) -> list[PodTracker]:
    return [PodTracker(a, cc, lambda _t: None) for a in sorted(addresses)]


def test_policy_by_cc() -> None:
    rng = random.Random(1)
    assert isinstance(policy_for(0, rng), RandomChoice2)
    assert policy_for(1, rng) is first_available
    assert policy_for(3, rng) is first_available
    assert isinstance(policy_for(4, rng), RoundRobin)


def test_first_available_packs_the_first_pod() -> None:
    # TestThrottlerSuccesses: CC 3, 5 dests, 3 requests → all on the lexicographically first.
    ts = trackers(3, [f"128.0.0.{i}:1234" for i in range(1, 6)])
    picks = [first_available(ts) for _ in range(3)]
    assert [p.address for p in picks if p] == ["128.0.0.1:1234"] * 3
    fourth = first_available(ts)
    assert fourth is not None
    assert fourth.address == "128.0.0.2:1234"


def test_round_robin_uses_every_pod() -> None:
    # TestThrottlerSuccesses: CC 5, 3 dests, 3 requests → all three dests used.
    ts = trackers(5, ["a:1", "b:1", "c:1"])
    rr = RoundRobin()
    picks = [rr(ts) for _ in range(3)]
    assert {p.address for p in picks if p} == {"a:1", "b:1", "c:1"}


def test_round_robin_skips_full_pods() -> None:
    ts = trackers(4, ["a:1", "b:1"])
    rr = RoundRobin()
    for _ in range(4):
        assert ts[0].try_reserve()  # a is full
    assert not ts[0].try_reserve()
    picks = [rr(ts) for _ in range(4)]
    assert all(p is not None and p.address == "b:1" for p in picks)
    assert rr(ts) is None


def test_random_choice_2_prefers_the_less_loaded() -> None:
    ts = trackers(0, ["a:1", "b:1"])
    rc2 = RandomChoice2(random.Random(3))
    for _ in range(5):
        assert ts[0].try_reserve()
    picks = [rc2(ts) for _ in range(5)]
    assert [p.address for p in picks if p] == ["b:1"] * 5
    # now equal (5 and 5): both are chosen over many tie-breaks
    seen = set()
    for _ in range(50):
        pick = rc2(ts)
        assert pick is not None
        seen.add(pick.address)
        pick.release()
    assert seen == {"a:1", "b:1"}


def test_random_choice_2_balances_in_flight() -> None:
    ts = trackers(0, [f"p{i}:1" for i in range(4)])
    rc2 = RandomChoice2(random.Random(11))
    for _ in range(400):
        assert rc2(ts) is not None
    counts = [t.in_flight for t in ts]
    assert max(counts) - min(counts) <= 3, counts


# --- the revision throttler ------------------------------------------------------------------


async def test_cc1_never_two_on_one_pod() -> None:
    rt = throttler(1)
    rt.update_addresses(["a:1", "b:1"])
    active: dict[str, int] = {"a:1": 0, "b:1": 0}
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with rt.admit(5) as adm:
            active[adm.address] += 1
            peak = max(peak, active[adm.address])
            await asyncio.sleep(0.001)
            active[adm.address] -= 1

    await asyncio.gather(*(one() for _ in range(50)))
    assert peak == 1
    assert rt.in_flight == 0


async def test_requests_wait_for_a_pod_and_go_in_arrival_order() -> None:
    rt = throttler(1)
    order: list[int] = []
    released = asyncio.Event()

    async def one(i: int) -> None:
        async with rt.admit(5):
            order.append(i)
            await released.wait()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0)  # let each enter the queue before the next
    await poll(lambda: rt.waiting == 5)
    rt.update_addresses(["a:1"])
    await poll(lambda: order == [0])
    released.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_infinite_breaker_buffers_until_a_pod() -> None:
    rt = throttler(0)
    got: list[str] = []

    async def one() -> None:
        async with rt.admit(5) as adm:
            got.append(adm.address)

    tasks = [asyncio.create_task(one()) for _ in range(3)]
    await poll(lambda: rt.waiting == 3)
    rt.update_addresses(["a:1"])
    await asyncio.gather(*tasks)
    assert got == ["a:1"] * 3


@pytest.mark.parametrize("cc", [pytest.param(0, id="cc0"), pytest.param(2, id="cc2")])
async def test_queue_full(cc: int) -> None:
    rt = throttler(cc, queue_depth=2)
    tasks = [asyncio.create_task(enter(rt)) for _ in range(2)]
    await poll(lambda: rt.waiting == 2)
    with pytest.raises(QueueFullError, match="pending request queue full"):
        async with rt.admit(5):
            pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert rt.waiting == 0
    assert rt.in_flight == 0


async def enter(rt: RevisionThrottler) -> None:
    async with rt.admit(0):
        await asyncio.Event().wait()


@pytest.mark.parametrize("cc", [pytest.param(0, id="cc0"), pytest.param(2, id="cc2")])
async def test_wait_times_out(cc: int) -> None:
    rt = throttler(cc)
    with pytest.raises(
        WaitTimeoutError, match=r"ready pod of revision default/iris-v1 after 0\.05s"
    ):
        async with rt.admit(0.05):
            pass
    assert rt.waiting == 0
    assert rt.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    rt = throttler(1)
    task = asyncio.create_task(enter(rt))
    await poll(lambda: rt.waiting == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert rt.waiting == 0
    assert rt.in_flight == 0
    rt.update_addresses(["a:1"])
    async with rt.admit(1) as adm:
        assert adm.address == "a:1"


async def test_removed_pod_gets_no_new_request_and_in_flight_finishes() -> None:
    rt = throttler(1)
    rt.update_addresses(["a:1", "b:1"])
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(rt.admit(1))
        assert first.address == "a:1"
        rt.update_addresses(["b:1"])
        assert rt.capacity == 2  # b's slot plus the one still running on a
        second = await stack.enter_async_context(rt.admit(1))
        assert second.address == "b:1"
        assert first.tracker is not None  # still reserved: the request finishes
    assert rt.in_flight == 0
    assert rt.capacity == 1
    async with rt.admit(1) as adm:
        assert adm.address == "b:1"


async def test_retry_picks_another_pod_or_none() -> None:
    rt = throttler(4)
    rt.update_addresses(["a:1", "b:1"])
    async with rt.admit(1) as adm:
        first = adm.address
        assert adm.retry()
        assert adm.address != first
        assert not adm.retry()
        assert adm.tracker is None
    assert rt.in_flight == 0
    assert all(t.in_flight == 0 for t in rt.assigned())


async def test_subsetting_limits_to_assigned_pods() -> None:
    rt = throttler(1, peers=PeerInfo(count=2, index=1))
    rt.update_addresses(["a:1", "b:1", "c:1", "d:1"])
    assert [t.address for t in rt.assigned()] == ["c:1", "d:1"]
    assert rt.capacity == 2
    rt.update_peers(PeerInfo(count=1, index=0))
    assert rt.capacity == 4


async def test_throttler_registry_applies_known_addresses() -> None:
    th = Throttler(rng=random.Random(1))
    th.set_addresses(KEY, ["b:1", "a:1"])
    rt = th.get(
        Revision(namespace="default", service="iris", name="iris-v1", container_concurrency=2)
    )
    assert rt.addresses() == ["a:1", "b:1"]
    assert rt.capacity == 4
    th.set_addresses(KEY, [])
    assert rt.capacity == 0
    th.update_revisions([])
    assert th.find(KEY) is None


# --- try_admit: the hot path's non-blocking admission ------------------------------------------


@pytest.mark.parametrize("cc", [pytest.param(0, id="cc0"), pytest.param(1, id="cc1")])
def test_try_admit_without_pods_holds_nothing(cc: int) -> None:
    rt = throttler(cc)
    assert rt.try_admit() is None
    assert rt.in_flight == 0


def test_try_admit_takes_both_slots_and_release_gives_both_back() -> None:
    rt = throttler(1)
    rt.update_addresses(["a:1"])
    adm = rt.try_admit()
    assert adm is not None
    assert (adm.address, rt.in_flight, rt.assigned()[0].in_flight) == ("a:1", 1, 1)
    assert rt.try_admit() is None  # CC=1: the pod is busy
    assert rt.in_flight == 1
    adm.release()
    adm.release()  # a second release does nothing
    assert (rt.in_flight, rt.assigned()[0].in_flight) == (0, 0)
    again = rt.try_admit()
    assert again is not None
    again.release()


def test_try_admit_gives_the_revision_slot_back_when_no_pod_is_free() -> None:
    rt = throttler(1)
    rt.update_addresses(["a:1"])
    assert rt.assigned()[0].try_reserve()  # the pod is full, the revision breaker is not
    assert rt.try_admit() is None
    assert rt.in_flight == 0


async def test_try_admit_never_overtakes_a_waiter() -> None:
    rt = throttler(1)
    rt.update_addresses(["a:1"])
    first = rt.try_admit()
    assert first is not None
    order: list[str] = []

    async def waiter() -> None:
        async with rt.admit(5):
            order.append("waiter")

    task = asyncio.create_task(waiter())
    await poll(lambda: rt.waiting == 1)
    first.release()  # the slot is handed to the waiter, which has not run yet
    assert rt.try_admit() is None
    await task
    assert order == ["waiter"]
    assert rt.in_flight == 0


async def test_try_admit_and_admit_share_cc() -> None:
    rt = throttler(2)
    rt.update_addresses(["a:1"])
    held = [rt.try_admit(), rt.try_admit()]
    assert all(a is not None for a in held)
    assert rt.try_admit() is None
    got = asyncio.Event()

    async def waiter() -> None:
        async with rt.admit(5):
            got.set()

    task = asyncio.create_task(waiter())
    await poll(lambda: rt.waiting == 1)
    assert not got.is_set()
    adm = held.pop()
    assert adm is not None
    adm.release()
    await task
    assert got.is_set()
    for a in held:
        assert a is not None
        a.release()
    assert rt.in_flight == 0
    assert rt.assigned()[0].in_flight == 0


async def poll(cond: Callable[[], bool], within_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


# --- a live containerConcurrency change (issue 19, item 2) -------------------------------------


def iris(cc: int) -> Revision:
    return Revision(namespace="default", service="iris", name="iris-v1", container_concurrency=cc)


@pytest.mark.parametrize(
    ("before", "after", "capacity", "pod_limit"),
    [
        pytest.param(0, 1, 2, 1, id="cc0-to-cc1"),
        pytest.param(1, 4, 8, 4, id="cc1-to-cc4"),
        pytest.param(4, 0, 1, 0, id="cc4-to-cc0"),  # the infinite breaker, open
    ],
)
def test_a_cc_change_reaches_capacity_pods_and_policy(
    before: int, after: int, capacity: int, pod_limit: int
) -> None:
    th = Throttler(rng=random.Random(1))
    th.set_addresses(KEY, ["a:1", "b:1"])
    rt = th.get(iris(before))
    th.update_revisions([iris(after)])
    assert th.get(iris(after)) is rt
    assert rt.container_concurrency == after
    assert rt.capacity == capacity
    assert [t.capacity for t in rt.assigned()] == [pod_limit, pod_limit]
    assert type(rt._policy) is type(policy_for(after, random.Random(1)))


async def test_waiters_of_a_retired_breaker_go_on_to_a_pod() -> None:
    """CC 1 → 0 while requests wait on the CC-1 breaker: they proceed (CC 0 has no limit),
    and the request that held the slot releases it without error."""
    th = Throttler(rng=random.Random(1))
    th.set_addresses(KEY, ["a:1"])
    rt = th.get(iris(1))
    first = rt.try_admit()
    assert first is not None

    async def one() -> str:
        async with rt.admit(5.0) as admission:
            return admission.address

    waiters = [asyncio.create_task(one()) for _ in range(3)]
    await asyncio.sleep(0)
    assert rt.waiting == 3
    th.get(iris(0))  # the new spec's first request, before the route table says so
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == ["a:1"] * 3
    first.release()
    assert rt.try_admit() is not None

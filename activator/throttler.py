"""The throttler: per revision, a revision breaker in front of one pod tracker per healthy pod.

A request first waits for a slot on the revision breaker (FIFO, so requests buffered while the
revision has no pod go out in arrival order), bounded by the queue depth and the revision
timeout; then the load-balancing policy reserves a slot on one pod tracker (reference §4.3).

Two ways in: :meth:`RevisionThrottler.try_admit` takes both slots only if they are free now
(Knative's breaker ``Reserve`` fast path: no waiter is overtaken, nothing is awaited), the
handler's hot path; :meth:`RevisionThrottler.admit` waits for them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from activator.capacity import MAX_INT32, assign_slice, calculate_capacity
from activator.lb import BREAKER_QUEUE_DEPTH, PodTracker, policy_for
from cluster.spec import Revision, RevisionKey
from dataplane.breaker import Breaker, QueueFullError

__all__ = [
    "Admission",
    "InfiniteBreaker",
    "PeerInfo",
    "QueueFullError",
    "RevisionThrottler",
    "Throttler",
    "WaitTimeoutError",
]

Release = Callable[[], None]


class WaitTimeoutError(Exception):
    """The revision timeout passed while the request waited for a ready pod (503)."""

    def __init__(self, key: RevisionKey, timeout_s: float) -> None:
        super().__init__(
            f"timed out waiting for a ready pod of revision {key} after {timeout_s:g}s"
        )


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """How many activators share the revisions, and this one's index (-1: unknown → all pods)."""

    count: int = 1
    index: int = -1


class InfiniteBreaker:
    """The revision breaker for CC=0: capacity 0 (everyone waits) or 1 (everyone passes).

    Unlike Knative's, waiting is bounded by ``queue_depth`` too (the issue asks for a bounded
    queue whatever the CC).
    """

    __slots__ = ("_in_flight", "_open", "_release_slot", "_waiters")

    def __init__(self) -> None:
        self._open = False
        self._in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._release_slot: Release = self._release  # bound once, handed to every reserve

    @property
    def capacity(self) -> int:
        return 1 if self._open else 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def update_concurrency(self, capacity: int) -> None:
        self._open = capacity > 0
        if self._open:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:  # in arrival order
                if not fut.done():
                    fut.set_result(None)

    def reserve(self) -> Release | None:
        """A slot if the breaker is open now (then nobody waits), as the function that frees it."""
        if not self._open:
            return None
        self._in_flight += 1
        return self._release_slot

    def _release(self) -> None:
        self._in_flight -= 1

    @asynccontextmanager
    async def maybe(self) -> AsyncIterator[None]:
        self._in_flight += 1
        try:
            if not self._open:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    if fut in self._waiters:
                        self._waiters.remove(fut)
            yield
        finally:
            self._in_flight -= 1


class Admission:
    """A request's hold on one pod tracker and, when taken by :meth:`RevisionThrottler.try_admit`,
    on its revision slot (else the ``admit`` context holds that). :meth:`release` frees both."""

    __slots__ = ("_slot", "_throttler", "tracker", "tried")

    def __init__(
        self, throttler: RevisionThrottler, tracker: PodTracker, slot: Release | None = None
    ) -> None:
        self._throttler = throttler
        self.tracker: PodTracker | None = tracker
        self._slot = slot
        self.tried: set[str] | None = None  # pods given up on (made on the first retry)

    @property
    def address(self) -> str:
        if self.tracker is None:
            raise RuntimeError("no pod reserved")
        return self.tracker.address

    def retry(self) -> bool:
        """Give the pod back and reserve another one not tried yet; False if there is none.

        The revision slot stays held: the request still counts against the revision."""
        tracker = self.tracker
        if tracker is None:
            return False
        if self.tried is None:
            self.tried = set()
        self.tried.add(tracker.address)
        self.tracker = None
        tracker.release()
        self.tracker = self._throttler.pick(exclude=self.tried)
        return self.tracker is not None

    def release(self) -> None:
        """Free the pod slot, then the revision slot; a second call does nothing."""
        tracker = self.tracker
        if tracker is not None:
            self.tracker = None
            tracker.release()
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot()


class RevisionThrottler:
    """Breakers, trackers and load balancing for one revision."""

    __slots__ = (
        "_assigned",
        "_breaker",
        "_orphans",
        "_peers",
        "_pick_waiters",
        "_policy",
        "_queue_depth",
        "_rng",
        "_trackers",
        "container_concurrency",
        "key",
    )

    def __init__(
        self,
        key: RevisionKey,
        container_concurrency: int,
        *,
        rng: random.Random,
        peers: PeerInfo = PeerInfo(),
        queue_depth: int = BREAKER_QUEUE_DEPTH,
    ) -> None:
        self.key = key
        self.container_concurrency = container_concurrency
        self._queue_depth = queue_depth
        self._peers = peers
        self._rng = rng
        self._breaker = self._new_breaker(container_concurrency)
        self._policy = policy_for(container_concurrency, rng)
        self._trackers: dict[str, PodTracker] = {}
        self._assigned: list[PodTracker] = []
        # Removed pods with requests still in flight: their revision slots count on top of the
        # capacity until they finish, so a draining pod does not hold back its replacement.
        self._orphans: set[PodTracker] = set()
        self._pick_waiters: list[asyncio.Future[None]] = []

    # --- state -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._breaker.capacity

    @property
    def ready(self) -> bool:
        """Whether this activator has at least one pod to send requests to."""
        return bool(self._assigned)

    @property
    def waiting(self) -> int:
        """Requests admitted to the throttler that hold no revision slot yet."""
        return self._breaker.waiting

    @property
    def in_flight(self) -> int:
        return self._breaker.in_flight

    def addresses(self) -> list[str]:
        return sorted(self._trackers)

    def assigned(self) -> list[PodTracker]:
        return list(self._assigned)

    def update_addresses(self, addresses: Iterable[str]) -> None:
        """The healthy pods now: new ones get a tracker, removed ones lose theirs at once
        (requests in flight on them keep their reservation and finish)."""
        wanted = set(addresses)
        for address in list(self._trackers):
            if address not in wanted:
                tracker = self._trackers.pop(address)
                if tracker.in_flight > 0:
                    self._orphans.add(tracker)
        for address in wanted:
            if address not in self._trackers:
                self._trackers[address] = PodTracker(
                    address, self.container_concurrency, self._on_release
                )
        self._recompute()

    def update_peers(self, peers: PeerInfo) -> None:
        self._peers = peers
        self._recompute()

    def update_container_concurrency(self, container_concurrency: int) -> None:
        """The revision's containerConcurrency changed (a spec edit; the Deployment's
        annotation): capacity, each pod's limit and the policy follow at once.

        Nothing in flight fails. Requests on a pod keep their slot (a pod over its new limit
        takes no more until it is under). Between CC = 0 and CC > 0 the revision breaker
        changes kind: requests waiting on the old one are let through to wait for a pod slot
        (each pod's limit still holds), and its holders release into it as before.
        """
        if container_concurrency == self.container_concurrency:
            return
        old = self.container_concurrency
        self.container_concurrency = container_concurrency
        self._policy = policy_for(container_concurrency, self._rng)
        for tracker in (*self._trackers.values(), *self._orphans):
            tracker.capacity = container_concurrency
        if (old == 0) != (container_concurrency == 0):
            retired, self._breaker = self._breaker, self._new_breaker(container_concurrency)
            retired.update_concurrency(MAX_INT32 if isinstance(retired, Breaker) else 1)
        self._recompute()

    def _new_breaker(self, container_concurrency: int) -> Breaker | InfiniteBreaker:
        if container_concurrency == 0:
            return InfiniteBreaker()
        return Breaker(queue_depth=self._queue_depth, max_concurrency=MAX_INT32, initial_capacity=0)

    def _recompute(self) -> None:
        ordered = [self._trackers[a] for a in sorted(self._trackers)]
        cc = self.container_concurrency
        # Subsetting only when each pod's capacity is bounded (CC > 0), as Knative.
        self._assigned = (
            assign_slice(ordered, self._peers.index, self._peers.count) if cc > 0 else ordered
        )
        capacity = calculate_capacity(cc, len(ordered), len(self._assigned), self._peers.count)
        if cc > 0 and self._orphans:
            capacity = min(MAX_INT32, capacity + sum(t.in_flight for t in self._orphans))
        self._breaker.update_concurrency(capacity)
        self._wake_pickers()

    def _on_release(self, tracker: PodTracker) -> None:
        if self._orphans and tracker in self._orphans:
            if tracker.in_flight == 0:
                self._orphans.discard(tracker)
            self._recompute()
        elif self._pick_waiters:
            self._wake_pickers()

    def _wake_pickers(self) -> None:
        if self._pick_waiters:
            waiters, self._pick_waiters = self._pick_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    # --- requests --------------------------------------------------------------------------

    def pick(self, exclude: set[str] | None = None) -> PodTracker | None:
        """Reserve a slot on a pod now, by the revision's policy; None if no pod has one."""
        trackers = self._assigned
        if exclude:
            trackers = [t for t in trackers if t.address not in exclude]
        return self._policy(trackers)

    def try_admit(self) -> Admission | None:
        """A revision slot and a pod slot if both are free now, else None with nothing held.

        Never overtakes a request that waits: the revision breaker refuses while it has
        waiters (its FIFO), and so does this while a request admitted by it waits for a pod.
        """
        if self._pick_waiters:
            return None
        slot = self._breaker.reserve()
        if slot is None:
            return None
        assigned = self._assigned
        tracker: PodTracker | None
        if len(assigned) == 1:  # one pod: every policy comes down to "that one, if free"
            tracker = assigned[0]
            if not tracker.try_reserve():
                tracker = None
        else:
            tracker = self._policy(assigned)
        if tracker is None:  # every pod full (a removed pod still draining holds the rest)
            slot()
            return None
        return Admission(self, tracker, slot)

    async def wait_pick(self, exclude: set[str] | None = None) -> PodTracker | None:
        """A slot on a pod not in ``exclude``, waiting for the next release or update while
        none is free; the caller bounds the wait. Without ``exclude`` (a request the revision
        breaker admitted: a pod is free but for races, such as one removed between admission
        and pick) it always returns one. With it (a request that goes to another pod after its
        first refused: it keeps its revision slot, and requests that arrive meanwhile do not
        overtake it), None once no such pod is left."""
        while True:
            if exclude and all(t.address in exclude for t in self._assigned):
                return None
            pick = self.pick(exclude)
            if pick is not None:
                return pick
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pick_waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._pick_waiters:
                    self._pick_waiters.remove(fut)

    @asynccontextmanager
    async def admit(self, timeout_s: float) -> AsyncIterator[Admission]:
        """Wait (at most ``timeout_s``; 0 = forever) for a revision slot and a pod.

        Raises :class:`QueueFullError` at once when ``queue_depth`` requests already wait, and
        :class:`WaitTimeoutError` when the wait runs out. A cancelled waiter leaves the queue.
        """
        if self._breaker.waiting >= self._queue_depth:
            raise QueueFullError
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(timeout_s if timeout_s > 0 else None):
                    await stack.enter_async_context(self._breaker.maybe())
                    tracker = await self.wait_pick()
                    assert tracker is not None  # (no exclude: it waits for one)
            except TimeoutError:
                raise WaitTimeoutError(self.key, timeout_s) from None
            admission = Admission(self, tracker)
            try:
                yield admission
            finally:
                admission.release()


class Throttler:
    """The revision throttlers of one activator, created on a revision's first request."""

    def __init__(
        self,
        *,
        peers: PeerInfo = PeerInfo(),
        queue_depth: int = BREAKER_QUEUE_DEPTH,
        rng: random.Random | None = None,
    ) -> None:
        self._peers = peers
        self._queue_depth = queue_depth
        self._rng = rng or random.Random()
        self._revisions: dict[RevisionKey, RevisionThrottler] = {}
        self._addresses: dict[RevisionKey, tuple[str, ...]] = {}

    def get(self, revision: Revision) -> RevisionThrottler:
        key = revision.key
        throttler = self._revisions.get(key)
        if throttler is not None:
            if throttler.container_concurrency != revision.container_concurrency:
                throttler.update_container_concurrency(revision.container_concurrency)
        else:
            throttler = RevisionThrottler(
                key,
                revision.container_concurrency,
                rng=self._rng,
                peers=self._peers,
                queue_depth=self._queue_depth,
            )
            throttler.update_addresses(self._addresses.get(key, ()))
            self._revisions[key] = throttler
        return throttler

    def find(self, key: RevisionKey) -> RevisionThrottler | None:
        return self._revisions.get(key)

    def revisions(self) -> Mapping[RevisionKey, RevisionThrottler]:
        return self._revisions

    def set_addresses(self, key: RevisionKey, addresses: Iterable[str]) -> None:
        """The healthy, probed pods of a revision (from the endpoint prober)."""
        ordered = tuple(sorted(set(addresses)))
        if ordered:
            self._addresses[key] = ordered
        else:
            self._addresses.pop(key, None)
        throttler = self._revisions.get(key)
        if throttler is not None:
            throttler.update_addresses(ordered)

    def set_peers(self, peers: PeerInfo) -> None:
        self._peers = peers
        for throttler in self._revisions.values():
            throttler.update_peers(peers)

    def update_revisions(self, revisions: Iterable[Revision]) -> None:
        """After a route change: each routed revision's containerConcurrency takes effect now;
        idle throttlers of revisions no longer routed are dropped."""
        routed = {rev.key: rev for rev in revisions}
        for key, throttler in list(self._revisions.items()):
            rev = routed.get(key)
            if rev is not None:
                throttler.update_container_concurrency(rev.container_concurrency)
            elif throttler.in_flight == 0:
                del self._revisions[key]

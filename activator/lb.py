"""Pod trackers and the load-balancing policies chosen by containerConcurrency (reference §4.3).

| CC  | policy                                                      |
| --- | ----------------------------------------------------------- |
| 0   | power of two choices on in-flight requests (``random_choice_2``) |
| 1–3 | first available, trackers sorted by address                  |
| > 3 | round robin from the last pick + 1                           |
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from dataplane.breaker import Breaker

BREAKER_QUEUE_DEPTH = 10_000

Release = Callable[[], None]


class PodTracker:
    """One healthy pod of a revision: its address, in-flight count and (CC > 0) its breaker."""

    __slots__ = ("_on_release", "address", "breaker", "in_flight")

    def __init__(
        self,
        address: str,
        container_concurrency: int,
        on_release: Callable[[PodTracker], None],
    ) -> None:
        self.address = address
        self.in_flight = 0
        self._on_release = on_release
        self.breaker: Breaker | None = (
            Breaker(
                queue_depth=BREAKER_QUEUE_DEPTH,
                max_concurrency=container_concurrency,
                initial_capacity=container_concurrency,
            )
            if container_concurrency > 0
            else None
        )

    def reserve(self) -> Release | None:
        """A slot on this pod if one is free now, as the function that gives it back."""
        inner: Release | None = None
        if self.breaker is not None:
            inner = self.breaker.reserve()
            if inner is None:
                return None
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.in_flight -= 1
            if inner is not None:
                inner()
            self._on_release(self)

        return release


Pick = tuple[PodTracker, Release]


class Policy(Protocol):
    """Chooses a tracker among ``trackers`` (sorted by address) and reserves a slot on it."""

    def __call__(self, trackers: Sequence[PodTracker]) -> Pick | None: ...


class RandomChoice2:
    """Two random trackers, the one with fewer requests in flight (ties: either, at random)."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self, trackers: Sequence[PodTracker]) -> Pick | None:
        n = len(trackers)
        if n == 0:
            return None
        if n == 1:
            chosen = trackers[0]
        else:
            i = self._rng.randrange(n)
            j = self._rng.randrange(n - 1)
            if j >= i:
                j += 1  # two distinct indices
            a, b = trackers[i], trackers[j]
            # i was random already, so keeping a on a tie is a random tie-break
            chosen = b if b.in_flight < a.in_flight else a
        release = chosen.reserve()
        if release is None:  # only with a breaker on the trackers: try the rest in order
            return first_available(trackers)
        return chosen, release


def first_available(trackers: Sequence[PodTracker]) -> Pick | None:
    """The first tracker (by address) with a free slot: packs requests on the fewest pods."""
    for tracker in trackers:
        release = tracker.reserve()
        if release is not None:
            return tracker, release
    return None


class RoundRobin:
    """From the tracker after the last one picked, the first with a free slot, wrapping once."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, trackers: Sequence[PodTracker]) -> Pick | None:
        n = len(trackers)
        if self._next >= n:
            self._next = 0
        for k in range(n):
            p = (self._next + k) % n
            release = trackers[p].reserve()
            if release is not None:
                self._next = p + 1
                return trackers[p], release
        return None


def policy_for(container_concurrency: int, rng: random.Random) -> Policy:
    """Knative's choice of policy by CC (table in the module docstring)."""
    if container_concurrency == 0:
        return RandomChoice2(rng)
    if container_concurrency <= 3:
        return first_available
    return RoundRobin()

"""Pod trackers and the load-balancing policies chosen by containerConcurrency (reference §4.3).

| CC  | policy                                                      |
| --- | ----------------------------------------------------------- |
| 0   | power of two choices on in-flight requests (``random_choice_2``) |
| 1–3 | first available, trackers sorted by address                  |
| > 3 | round robin from the last pick + 1                           |

A policy reserves a slot on the tracker it returns; whoever holds it calls
:meth:`PodTracker.release` exactly once (:class:`activator.throttler.Admission` does).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

BREAKER_QUEUE_DEPTH = 10_000


class PodTracker:
    """One healthy pod of a revision: its address, in-flight count and (CC > 0) capacity.

    Knative gives each tracker a breaker but only ever calls its non-blocking ``Reserve``: a
    bounded counter is the same thing without the breaker's queue (and its memory).
    """

    __slots__ = ("_on_release", "address", "capacity", "in_flight")

    def __init__(
        self,
        address: str,
        container_concurrency: int,
        on_release: Callable[[PodTracker], None],
    ) -> None:
        self.address = address
        self.capacity = container_concurrency  # 0 = unbounded
        self.in_flight = 0
        self._on_release = on_release

    def try_reserve(self) -> bool:
        """Take a slot on this pod if one is free now (always, when CC = 0)."""
        if self.capacity and self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`try_reserve` (once per reservation)."""
        self.in_flight -= 1
        self._on_release(self)


class Policy(Protocol):
    """Chooses a tracker among ``trackers`` (sorted by address) and reserves a slot on it."""

    def __call__(self, trackers: Sequence[PodTracker]) -> PodTracker | None: ...


class RandomChoice2:
    """Two random trackers, the one with fewer requests in flight (ties: either, at random)."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self, trackers: Sequence[PodTracker]) -> PodTracker | None:
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
        if chosen.try_reserve():
            return chosen
        return first_available(trackers)  # only with bounded trackers: try the rest in order


def first_available(trackers: Sequence[PodTracker]) -> PodTracker | None:
    """The first tracker (by address) with a free slot: packs requests on the fewest pods."""
    for tracker in trackers:
        if tracker.try_reserve():
            return tracker
    return None


class RoundRobin:
    """From the tracker after the last one picked, the first with a free slot, wrapping once."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, trackers: Sequence[PodTracker]) -> PodTracker | None:
        n = len(trackers)
        if self._next >= n:
            self._next = 0
        for k in range(n):
            p = (self._next + k) % n
            if trackers[p].try_reserve():
                self._next = p + 1
                return trackers[p]
        return None


def policy_for(container_concurrency: int, rng: random.Random) -> Policy:
    """Knative's choice of policy by CC (table in the module docstring)."""
    if container_concurrency == 0:
        return RandomChoice2(rng)
    if container_concurrency <= 3:
        return first_available
    return RoundRobin()

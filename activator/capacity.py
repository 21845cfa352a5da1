"""Capacity and pod subsetting when several activators share a revision (reference §4.3, §5.9).

Pure functions, ported from Knative's ``pkg/activator/net/throttler.go`` with their names; the
vector tables of §5.9 are in tests/test_activator_throttler.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

MAX_INT32 = 2**31 - 1

T = TypeVar("T")


def pick_indices(num_trackers: int, index: int, num_activators: int) -> tuple[int, int, int]:
    """The slice ``[begin, end)`` of the sorted trackers that activator ``index`` owns, and the
    number of trackers left over (``remnants``) that are handed out one per activator.

    10 pods, 3 activators: activator 1 gets ``[3, 6)``, remnants 1 (pod 9 goes to activator 0).
    More activators than pods: each gets the single pod ``index % pods``.
    """
    if num_activators > num_trackers:
        begin = index % num_trackers
        return begin, begin + 1, 0
    size = num_trackers // num_activators
    begin = index * size
    return begin, begin + size, num_trackers % num_activators


def assign_slice(trackers: Sequence[T], index: int, num_activators: int) -> list[T]:
    """The trackers (already sorted by address) this activator sends requests to.

    Index -1 (not known yet), one activator, or at most one tracker → all of them. Otherwise the
    slice of :func:`pick_indices` plus ``tail[index]`` where ``tail`` is the last ``remnants``.
    6 pods, 4 activators, index 0 → pods 0 and 4 (``TestPodAssignmentFinite``).
    """
    if index < 0 or num_activators <= 1 or len(trackers) <= 1:
        return list(trackers)
    begin, end, remnants = pick_indices(len(trackers), index, num_activators)
    assigned = list(trackers[begin:end])
    if remnants > 0:
        tail = trackers[len(trackers) - remnants :]
        if index < len(tail):
            assigned.append(tail[index])
    return assigned


def calculate_capacity(
    container_concurrency: int, backend_count: int, num_trackers: int, activator_count: int
) -> int:
    """The revision breaker's capacity (Knative's ``calculateCapacity``).

    With pod trackers: ``CC × assigned trackers`` (CC=10, 2 assigned → 20). Without (ClusterIP
    routing, kept for the vectors): ``CC × backends`` split over the activators, at least 1
    (CC=10, 10 backends, 200 activators → 1). CC=0 with any backend → MaxInt32 (unbounded).
    """
    if num_trackers > 0:
        target = container_concurrency * num_trackers
    else:
        target = container_concurrency * backend_count
        if target > 0:
            target = max(1, target // max(1, activator_count))
    if backend_count > 0 and (container_concurrency == 0 or target > MAX_INT32):
        return MAX_INT32
    return max(0, min(target, MAX_INT32))


def infer_index(sorted_ips: Sequence[str], own_ip: str) -> int:
    """This activator's position among the healthy activator IPs (sorted); -1 if absent."""
    for i, ip in enumerate(sorted_ips):
        if ip == own_ip:
            return i
    return -1

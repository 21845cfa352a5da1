"""Knative's time windows: linear and weighted buckets, and the max window (reference §1.2, §1.3).

Everything is indexed by an integer slot, ``int(now // granularity)``, never by comparing floats:
Knative's ``Truncate(granularity)`` and ``timeToIndex`` for whole-second granularities. A window of
``window_s`` holds ``nb = ceil(window_s / granularity_s)`` slots, and Knative's duration tests
become integer tests on slots, exactly:

* "``bt + window <= lastWrite``" (too old)      ⇔ ``last - slot >= nb``
* "``now - lastWrite < window``" (partial tail) ⇔ ``now - last < nb``
* "``now - lastWrite > window``" (empty)        ⇔ ``now - last > floor(window_s / granularity_s)``

The bucket objects mutate in place: each is per-revision state owned by one collector. They are
plain lists of floats with ``__slots__``: one record or one average is O(1) in the steady state
(one record per second) and allocates nothing. The max window is kept as a tuple so the decider's
frozen state can hold it (``max_window_record``/``max_window_current``).
"""

from __future__ import annotations

import math

__all__ = [
    "LinearBuckets",
    "MaxEntries",
    "MaxWindow",
    "WeightedBuckets",
    "max_window_current",
    "max_window_record",
    "slot_count",
    "smoothing_coefficient",
]

# Knative's sentinel is the zero time.Time: a slot so far in the past that the first record resets
# the window and a fresh window is empty.
_NEVER = -(1 << 62)
_PRECISION = 1e6  # WindowAverage rounds to 6 digits (roundToNDigits(6, …)).
_WEIGHT_PRECISION = 0.9999  # Knative's weightPrecision.
_MIN_EXPONENT = 0.2  # Knative's minExponent.


def _ratio(window_s: float, granularity_s: float) -> float:
    if granularity_s <= 0:
        raise ValueError(f"granularity = {granularity_s}s: must be > 0")
    if window_s < granularity_s:
        raise ValueError(f"window = {window_s}s: must be >= granularity {granularity_s}s")
    # 60 s / 1 s = 60.0 exactly; rounding to 9 digits absorbs float noise such as 0.3 / 0.1.
    return float(round(window_s / granularity_s, 9))


def slot_count(window_s: float, granularity_s: float) -> int:
    """Number of slots of a window: ``ceil(window / granularity)`` (60 s / 2 s → 30, 5 s / 2 s → 3)."""
    return math.ceil(_ratio(window_s, granularity_s))


def smoothing_coefficient(nb: int) -> float:
    """Knative's ``computeSmoothingCoeff``: ``max(1 - (1 - 0.9999)^(1/nb), 0.2)``.

    nb 100 → 0.2, 60 → 0.2, 40 → 0.20567, 6 → 0.78456 (``test_smoothing_coefficient``).
    """
    return max(1.0 - math.pow(1.0 - _WEIGHT_PRECISION, 1.0 / nb), _MIN_EXPONENT)


class _Buckets:
    """The ring buffer and ``Record``/``IsEmpty`` shared by the linear and weighted windows."""

    __slots__ = ("_buckets", "_empty_span", "_first", "_g", "_last", "_nb", "_total")

    def __init__(self, window_s: float, granularity_s: float = 1.0) -> None:
        ratio = _ratio(window_s, granularity_s)
        self._g = granularity_s
        self._nb = math.ceil(ratio)
        self._empty_span = math.floor(ratio)
        self._buckets = [0.0] * self._nb
        self._first = _NEVER
        self._last = _NEVER
        self._total = 0.0

    @property
    def slots(self) -> int:
        """Number of buckets (``ceil(window / granularity)``)."""
        return self._nb

    def record(self, now: float, value: float) -> None:
        """Add ``value`` to the bucket of ``now``; values in the same bucket are summed.

        A value a whole window older than the last write is ignored; a write after a gap zeroes the
        skipped buckets; a write a whole window after the last one resets the window (and the
        partial-window divisor starts again from it).
        """
        slot = int(now // self._g)
        last = self._last
        if slot != last:
            if slot > last:
                nb = self._nb
                buckets = self._buckets
                if slot - last >= nb:
                    # No write for a whole window: start afresh from this slot.
                    for i in range(nb):
                        buckets[i] = 0.0
                    self._total = 0.0
                    self._first = slot
                else:
                    # Zero the buckets skipped since the last write (they hold slot - nb data).
                    total = self._total
                    for i in range(last + 1, slot + 1):
                        idx = i % nb
                        total -= buckets[idx]
                        buckets[idx] = 0.0
                    self._total = total
                self._last = slot
            elif last - slot >= self._nb:
                return  # A window old or older (5 s window: now-5s and now-6s are dropped).
            elif slot < self._first:
                self._first = slot  # An older-but-in-window value widens the partial window.
        self._buckets[slot % self._nb] += value
        self._total += value

    def is_empty(self, now: float) -> bool:
        """True if nothing was recorded within the window before ``now`` (Knative's ``IsEmpty``)."""
        return int(now // self._g) - self._last > self._empty_span

    def snapshot(self, now: float) -> dict[int, float]:
        """The live buckets at ``now`` by slot (``int(t // granularity)``), gaps included as 0.

        Live = the slots the linear average divides by: from the first write (or a window back
        from ``max(now, last write)``) up to the last write. For status pages, debugging and tests.
        """
        slot = int(now // self._g)
        last = self._last
        if slot - last >= self._nb:
            return {}
        lo = max(self._first, max(slot, last) - self._nb + 1)
        return {i: self._buckets[i % self._nb] for i in range(lo, last + 1)}


class LinearBuckets(_Buckets):
    """Knative's ``TimedFloat64Buckets``: the mean of the window's buckets.

    The mean is over the buckets since the first write (a partial window), and trailing seconds
    with no data after the last write shrink the divisor instead of counting as zeros; gaps inside
    the data count as zeros. Window 5 s, records 1..5 at t..t+4: avg(t+4) = 3; avg(t+6) =
    (15-1-2)/3 = 4 (``test_linear_table``).
    """

    __slots__ = ()

    def window_average(self, now: float) -> float:
        """The window's mean at ``now``, floored to 6 decimals like Knative's ``roundToNDigits``."""
        slot = int(now // self._g)
        last = self._last
        d = slot - last
        nb = self._nb
        if d <= 0:
            # Query at (or before) the last write: total over the buckets since the first write.
            num = last - self._first + 1
            if num > nb:
                num = nb
            return math.floor(self._total / num * _PRECISION) / _PRECISION
        if d < nb:
            # The buckets after the last write hold stale data from a window ago: leave them out,
            # and divide by the buckets still covered (window 5 s, last write t+4, now t+6: 3).
            total = self._total
            buckets = self._buckets
            for i in range(last + 1, slot + 1):
                total -= buckets[i % nb]
            num = last - self._first + 1
            if num > nb - d:
                num = nb - d
            return math.floor(total / num * _PRECISION) / _PRECISION
        return 0.0


class WeightedBuckets(_Buckets):
    """Knative's ``WeightedFloat64Buckets`` (``metric-aggregation-algorithm: weighted-exponential``).

    ``Σ bucket_k · m(1-m)^k`` from the newest slot (k = 0 at ``now``) back over the window, with
    ``m = smoothing_coefficient(nb)``. Not normalised by the weights and not rounded, as in
    Knative: window 5 s, one record 2 at t → avg(t) = 2m, avg(t+1) = 2m(1-m).
    """

    __slots__ = ("_weights", "m")

    def __init__(self, window_s: float, granularity_s: float = 1.0) -> None:
        super().__init__(window_s, granularity_s)
        self.m = smoothing_coefficient(self._nb)
        # weights[k] = m(1-m)^k, built by repeated multiplication as Knative's loop does.
        weights = [self.m]
        for _ in range(self._nb - 1):
            weights.append(weights[-1] * (1.0 - self.m))
        self._weights = weights

    def window_average(self, now: float) -> float:
        """The exponentially weighted sum at ``now`` (0 when the window is empty)."""
        slot = int(now // self._g)
        last = self._last
        if slot - last > self._empty_span:
            return 0.0
        nb = self._nb
        numz = slot - last if slot > last else 0
        buckets = self._buckets
        weights = self._weights
        ret = 0.0
        # Walk from the last write back; the numz empty slots after it only shift the weights.
        for i in range(nb - numz):
            ret += buckets[(last - i) % nb] * weights[numz + i]
        return ret


# The max window: a monotone deque of (slot, value), values strictly decreasing from the front.
MaxEntries = tuple[tuple[int, int], ...]


def max_window_record(entries: MaxEntries, slots: int, slot: int, value: int) -> MaxEntries:
    """Knative's ``max.window.Record`` on an immutable deque: returns the new entries.

    Entries that can never be the max again (value ≤ the new one) and entries that left the window
    (``slot - entry_slot >= slots``) are dropped; two records in the same slot keep the larger.
    ``slots = 2``: record 5@0, 3@1 → max 5; then 1@2 → 5@0 has left, max 3.
    """
    n = len(entries)
    while n and entries[n - 1][1] <= value:
        n -= 1
    start = 0
    while start < n and slot - entries[start][0] >= slots:
        start += 1
    if start < n and entries[n - 1][0] == slot:
        return entries[start:n]  # Same slot, larger value already there.
    return (*entries[start:n], (slot, value))


def max_window_current(entries: MaxEntries, slots: int, slot: int) -> int:
    """The max over the entries still live at ``slot`` (``slot - entry_slot < slots``), else 0."""
    for entry_slot, value in entries:
        if slot - entry_slot < slots:
            return value
    return 0


class MaxWindow:
    """Knative's ``max.TimeWindow``: the max of the values recorded in the last ``window_s``.

    Used for ``scale-down-delay`` (§1.3 step 10) with the 2 s tick as granularity: a delay of 60 s
    holds 30 slots and ``current`` is the largest desired scale of the last 30 ticks.
    """

    __slots__ = ("_entries", "_g", "slots")

    def __init__(self, window_s: float, granularity_s: float = 2.0) -> None:
        self._g = granularity_s
        self.slots = slot_count(window_s, granularity_s)
        self._entries: MaxEntries = ()

    @property
    def entries(self) -> MaxEntries:
        """The (slot, value) deque, front = current max."""
        return self._entries

    def record(self, now: float, value: int) -> None:
        """Record ``value`` in the slot of ``now``."""
        self._entries = max_window_record(self._entries, self.slots, int(now // self._g), value)

    def current(self, now: float) -> int:
        """The max over the slots still within the window at ``now`` (0 if none)."""
        return max_window_current(self._entries, self.slots, int(now // self._g))

"""Knative's time windows: the §5.5 vectors by name, the max window, and properties against a model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.windows import (
    LinearBuckets,
    MaxWindow,
    WeightedBuckets,
    max_window_current,
    max_window_record,
    slot_count,
    smoothing_coefficient,
)

SEC = 1.0
# An arbitrary start with a sub-second offset, as Knative's tests use time.Now().
T0 = 1_700_000_000.0 + 0.25


def test_linear_table() -> None:
    """bucketing_test.go TestTimedFloat64BucketsSimple: the 13 steps of §5.5, in order."""
    b = LinearBuckets(5 * SEC, 1 * SEC)
    now = T0
    b.record(now, 1)  # 1
    assert b.window_average(now) == 1
    for i in range(1, 5):  # 2
        b.record(now + i * SEC, i + 1)
    assert b.window_average(now + 4 * SEC) == 3
    assert b.window_average(now + 3.6 * SEC) == 3  # 3: no new record
    assert b.window_average(now + 6 * SEC) == 4  # 4: (15-1-2)/3, the tail shrinks the divisor
    assert b.window_average(now + 10 * SEC) == 0  # 5: a whole window without data
    b.record(now + 6 * SEC, 91)  # 6
    assert b.window_average(now + 6 * SEC) == 20.6  # (15-1-2+91)/5
    now += 60 * SEC  # 7
    b.record(now, 1984)
    assert b.window_average(now) == 1984
    b.record(now - 3 * SEC, 4)  # 8: older but in the window: widens the partial window
    assert b.window_average(now) == 497  # 1988/4
    now += 1 * SEC  # 9
    b.record(now, 5)
    assert b.window_average(now) == 398.6  # 1993/5
    b.record(now - 3 * SEC, 10)  # 10
    assert b.window_average(now) == 400.6  # 2003/5
    b.record(now - 6 * SEC, 10)  # 11: too old
    assert b.window_average(now) == 400.6
    b.record(now - 5 * SEC, 10)  # 12: exactly a window old
    assert b.window_average(now) == 400.6
    b.record(now + 5 * SEC, 10)  # 13: a window later: reset
    assert b.window_average(now + 5 * SEC) == 10


def test_linear_descending_records() -> None:
    """TestTimedFloat64BucketsDescending: records at now+8..now+0 keep only the last window."""
    b = LinearBuckets(5 * SEC)
    for k in range(8, -1, -1):
        b.record(T0 + k * SEC, 5)
    assert b.window_average(T0 + 5 * SEC) == 5


@pytest.mark.parametrize(
    ("granularity", "records", "want"),
    [
        pytest.param(
            1.0,
            [(0.0, 1.0), (0.1, 10.0), (1.0, 1.0), (3.0, 1.0)],
            {0: 11.0, 1: 1.0, 2: 0.0, 3: 1.0},
            id="same-bucket-summing-1s",
        ),
        pytest.param(
            5.0,
            [(0.0, 1.0), (3.0, 11.0), (6.0, 1.0)],
            {0: 12.0, 1: 1.0},
            id="same-bucket-summing-5s",
        ),
    ],
)
def test_same_bucket_sums(
    granularity: float, records: list[tuple[float, float]], want: dict[int, float]
) -> None:
    """TestTimedFloat64BucketsRecord: values in one bucket are summed, not averaged."""
    t = 5000.0  # aligned to both granularities, as Knative's truncated test times
    b = LinearBuckets(60 * SEC, granularity)
    for dt, v in records:
        b.record(t + dt, v)
    base = int(t // granularity)
    last = t + records[-1][0]
    got = b.snapshot(last)
    assert got == {base + k: v for k, v in want.items()}


def test_collector_aggregate_stable_and_panic() -> None:
    """collector_test.go: stable 6 s, panic 2 s, i+5 at now+i → 11.5 and 13.5 at now+9 s."""
    stable = LinearBuckets(6 * SEC)
    panic = LinearBuckets(2 * SEC)
    for i in range(10):
        stable.record(T0 + i * SEC, i + 5)
        panic.record(T0 + i * SEC, i + 5)
    assert stable.window_average(T0 + 9 * SEC) == 11.5
    assert panic.window_average(T0 + 9 * SEC) == 13.5


def test_collector_evicts_old_values() -> None:
    """collector_test.go Record: a stat 70 s old is evicted by a fresh one."""
    b = LinearBuckets(60 * SEC)
    b.record(T0 - 70 * SEC, 100)
    b.record(T0, 10)
    assert b.window_average(T0) == 10


def test_linear_is_empty() -> None:
    b = LinearBuckets(5 * SEC)
    assert b.is_empty(T0)
    b.record(T0, 1)
    assert not b.is_empty(T0 + 5 * SEC)  # exactly a window later: not yet (strict >)
    assert b.is_empty(T0 + 6 * SEC)


def test_linear_gaps_inside_count_as_zeros() -> None:
    b = LinearBuckets(10 * SEC)
    b.record(T0, 10)
    b.record(T0 + 4 * SEC, 10)
    assert b.window_average(T0 + 4 * SEC) == 4  # 20 / 5 slots
    assert b.window_average(T0 + 6 * SEC) == 4  # trailing seconds shrink the divisor instead


@pytest.mark.parametrize(
    ("nb", "want"),
    [
        pytest.param(100, 0.2, id="nb-100"),
        pytest.param(60, 0.2, id="nb-60"),
        pytest.param(40, 0.20567, id="nb-40"),
        pytest.param(6, 0.78456, id="nb-6"),
    ],
)
def test_smoothing_coefficient(nb: int, want: float) -> None:
    """TestComputeSmoothingCoeff."""
    assert smoothing_coefficient(nb) == pytest.approx(want, abs=5e-6)


def test_weighted_window_steps() -> None:
    """TestWeightedFloat64Buckets: window 5 s."""
    b = WeightedBuckets(5 * SEC)
    m = smoothing_coefficient(5)
    assert b.m == m
    b.record(T0, 2)
    assert b.window_average(T0) == pytest.approx(2 * m)
    assert b.window_average(T0 + 1 * SEC) == pytest.approx(2 * m * (1 - m))
    b.record(T0 + 1 * SEC, 2)
    assert b.window_average(T0 + 1 * SEC) == pytest.approx(2 * m * (1 - m) + 2 * m)
    for i, v in enumerate([2, 3, 4, 5, 6]):
        b.record(T0 + (2 + i) * SEC, v)
    want = sum(v * m * (1 - m) ** k for k, v in enumerate([6, 5, 4, 3, 2]))
    assert b.window_average(T0 + 6 * SEC) == pytest.approx(want)
    assert b.window_average(T0 + 16 * SEC) == 0


def test_weighted_is_empty_and_fresh() -> None:
    b = WeightedBuckets(5 * SEC)
    assert b.is_empty(T0)
    assert b.window_average(T0) == 0


@pytest.mark.parametrize(
    ("window", "granularity", "want"),
    [
        pytest.param(60.0, 1.0, 60, id="60s-by-1s"),
        pytest.param(60.0, 2.0, 30, id="60s-by-2s"),
        pytest.param(5.0, 2.0, 3, id="5s-by-2s-rounds-up"),
        pytest.param(0.3, 0.1, 3, id="float-noise"),
    ],
)
def test_slot_count(window: float, granularity: float, want: int) -> None:
    assert slot_count(window, granularity) == want


def test_window_shorter_than_granularity_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        LinearBuckets(0.5, 1.0)


# --- max window (scale-down delay) -------------------------------------------------------------


def test_max_window_holds_the_max_for_the_window() -> None:
    """Delay 10 s with 2 s ticks = 5 slots: 10 is held until 5 slots after it."""
    w = MaxWindow(10 * SEC, 2 * SEC)
    assert w.slots == 5
    assert w.current(T0) == 0
    t = 2000.0
    w.record(t, 10)
    for k in range(1, 5):
        w.record(t + 2 * k * SEC, 3)
        assert w.current(t + 2 * k * SEC) == 10
    w.record(t + 10 * SEC, 3)
    assert w.current(t + 10 * SEC) == 3


def test_max_window_rises_at_once() -> None:
    w = MaxWindow(10 * SEC)
    w.record(2000.0, 3)
    w.record(2002.0, 7)
    assert w.current(2002.0) == 7
    assert w.entries == ((1001, 7),)


def test_max_window_same_slot_keeps_larger() -> None:
    w = MaxWindow(4 * SEC)
    w.record(2000.0, 9)
    w.record(2001.0, 4)  # same 2 s slot
    assert w.entries == ((1000, 9),)
    w.record(2000.5, 12)
    assert w.entries == ((1000, 12),)


def test_max_window_descending_staircase() -> None:
    entries = max_window_record((), 2, 0, 5)
    entries = max_window_record(entries, 2, 1, 3)
    assert max_window_current(entries, 2, 1) == 5
    entries = max_window_record(entries, 2, 2, 1)
    assert entries == ((1, 3), (2, 1))
    assert max_window_current(entries, 2, 2) == 3
    assert max_window_current(entries, 2, 3) == 1
    assert max_window_current(entries, 2, 4) == 0


# --- properties ----------------------------------------------------------------------------------


class LinearModel:
    """Knative's linear semantics restated over a dict of slots (no ring buffer)."""

    def __init__(self, nb: int) -> None:
        self.nb = nb
        self.slots: dict[int, float] = {}
        self.first: int | None = None
        self.last: int | None = None

    def record(self, slot: int, v: float) -> None:
        if self.last is None or self.first is None or slot - self.last >= self.nb:
            self.slots, self.first, self.last = {}, slot, slot
        elif slot > self.last:
            self.last = slot
        elif self.last - slot >= self.nb:
            return
        else:
            self.first = min(self.first, slot)
        self.slots[slot] = self.slots.get(slot, 0.0) + v

    def live(self, now: int) -> list[float]:
        """The buckets the average divides by: zeros for gaps, none for the empty tail."""
        if self.last is None or self.first is None or now - self.last >= self.nb:
            return []
        lo = max(self.first, max(now, self.last) - self.nb + 1)
        return [self.slots.get(i, 0.0) for i in range(lo, self.last + 1)]


steps = st.lists(
    st.tuples(
        st.integers(min_value=-8, max_value=12),  # move of the record time, in seconds
        st.floats(min_value=0.0, max_value=0.99),  # sub-second offset
        st.floats(min_value=0.0, max_value=1000.0, allow_subnormal=False),
        st.integers(min_value=-3, max_value=12),  # query offset from the record time
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(window=st.integers(min_value=1, max_value=10), steps=steps)
def test_linear_matches_model_and_lies_between_live_buckets(
    window: int, steps: list[tuple[int, float, float, int]]
) -> None:
    """The average is the mean of the live buckets (gaps count as 0, the empty tail after the last
    write does not), so it lies between the smallest and the largest of them; no live bucket → 0.
    The average is floored to 6 decimals, and the running total may drift by a few ulps."""
    b = LinearBuckets(float(window))
    model = LinearModel(window)
    t = 1000
    for move, frac, v, q in steps:
        t += move
        b.record(t + frac, v)
        model.record(t, v)
        now = t + q
        live = model.live(now)
        got = b.window_average(now + frac)
        tol = 1e-6 + 1e-9 * max(live, default=0.0) * len(steps)
        if not live:
            assert got == 0
            continue
        assert got == pytest.approx(sum(live) / len(live), abs=tol)
        assert min(live) - tol <= got <= max(live) + tol
        assert b.is_empty(now) == (now - (model.last or 0) > window)


@settings(max_examples=200, deadline=None)
@given(window=st.integers(min_value=1, max_value=10), steps=steps)
def test_weighted_is_bounded_by_the_largest_live_bucket(
    window: int, steps: list[tuple[int, float, float, int]]
) -> None:
    """The weights m(1-m)^k sum to < 1, so the weighted value is within [0, max live bucket]."""
    b = WeightedBuckets(float(window))
    model = LinearModel(window)
    t = 1000
    for move, frac, v, q in steps:
        t += move
        b.record(t + frac, v)
        model.record(t, v)
        now = t + max(q, 0)
        got = b.window_average(now)
        assert got >= -1e-9
        # The weighted walk covers the window before max(now, last): the live slots up to last.
        recent = [
            x for s, x in model.slots.items() if model.last is not None and model.last - s < window
        ]
        assert got <= max(recent, default=0.0) + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    slots=st.integers(min_value=1, max_value=8),
    records=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=50)),
        max_size=40,
    ),
)
def test_max_window_is_the_max_of_the_live_records(
    slots: int, records: list[tuple[int, int]]
) -> None:
    """Against brute force: the max of every value recorded in the last ``slots`` slots."""
    entries: tuple[tuple[int, int], ...] = ()
    seen: list[tuple[int, int]] = []
    slot = 0
    for move, v in records:
        slot += move
        entries = max_window_record(entries, slots, slot, v)
        seen.append((slot, v))
        want = max((x for s, x in seen if slot - s < slots), default=0)
        assert max_window_current(entries, slots, slot) == want
        assert len(entries) <= slots
        assert math.isfinite(want)

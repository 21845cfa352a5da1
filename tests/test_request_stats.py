"""RequestStats: Knative's time-weighted accounting (reference §2.1), on known timelines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metrics.request_stats import RequestReport, RequestStats

T0 = 1000.0


def test_docstring_example_one_full_and_one_half() -> None:
    s = RequestStats(T0)
    s.request_in(T0)
    s.request_in(T0 + 0.5)
    r = s.report(T0 + 1)
    assert r == RequestReport(1.5, 0.0, 2, 0, 1.0)


def test_proxied_counted_apart() -> None:
    s = RequestStats(T0)
    s.request_in(T0, proxied=True)
    s.request_in(T0 + 0.25)
    s.request_out(T0 + 0.75, proxied=True)
    r = s.report(T0 + 1)
    # all: 1*0.25 + 2*0.5 + 1*0.25 = 1.5; proxied: 1*0.75
    assert r.average_concurrency == pytest.approx(1.5)
    assert r.average_proxied_concurrency == pytest.approx(0.75)
    assert (r.request_count, r.proxied_request_count) == (2, 1)


def test_in_flight_carries_over_and_counts_reset() -> None:
    s = RequestStats(T0)
    s.request_in(T0 + 0.5)
    first = s.report(T0 + 1)
    assert (first.average_concurrency, first.request_count) == (0.5, 1)
    second = s.report(T0 + 2)
    assert (second.average_concurrency, second.request_count) == (1.0, 0)
    s.request_out(T0 + 2.5)
    third = s.report(T0 + 3)
    assert third.average_concurrency == pytest.approx(0.5)
    assert s.concurrency == 0


def test_empty_period_is_zero() -> None:
    s = RequestStats(T0)
    assert s.report(T0) == RequestReport(0.0, 0.0, 0, 0, 0.0)


def test_ten_short_requests_back_to_back() -> None:
    """Ten 0.1 s requests one after another: concurrency 1 throughout, 10 requests."""
    s = RequestStats(T0)
    for i in range(10):
        s.request_in(T0 + i * 0.1)
        s.request_out(T0 + (i + 1) * 0.1)
    r = s.report(T0 + 1)
    assert r.average_concurrency == pytest.approx(1.0)
    assert r.request_count == 10


@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.booleans()), min_size=0, max_size=30)
)
def test_average_bounded_by_peak(intervals: list[tuple[float, float, bool]]) -> None:
    """Average lies in [0, number of requests]; proxied ≤ all."""
    events: list[tuple[float, int, bool]] = []
    for a, b, proxied in intervals:
        start, end = min(a, b), max(a, b)
        events.append((T0 + start, 1, proxied))
        events.append((T0 + end, -1, proxied))
    events.sort(key=lambda e: (e[0], -e[1]))
    s = RequestStats(T0)
    for at, kind, proxied in events:
        if kind == 1:
            s.request_in(at, proxied=proxied)
        else:
            s.request_out(at, proxied=proxied)
    r = s.report(T0 + 1)
    assert 0 <= r.average_proxied_concurrency <= r.average_concurrency + 1e-9
    assert r.average_concurrency <= len(intervals) + 1e-9
    assert r.request_count == len(intervals)
    assert s.concurrency == 0

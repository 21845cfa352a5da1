"""The collector: Knative's collector vectors (reference §5.5) and the no-data semantics of §1.2."""

from __future__ import annotations

import pytest

from autoscaler.collector import Collector, Observed, WindowSpec
from cluster.spec import RevisionKey
from metrics.stat import Stat

KEY = RevisionKey("default", "rev-1")
NOW = 1_700_000_000.25  # sub-second offsets must not matter


def stat(conc: float = 0.0, rps: float = 0.0, pconc: float = 0.0, prps: float = 0.0) -> Stat:
    return Stat(
        pod_name="pod",
        average_concurrent_requests=conc,
        average_proxied_concurrent_requests=pconc,
        request_count=rps,
        proxied_request_count=prps,
    )


def collector(stable: float = 60.0, panic: float = 6.0, *, scraped: bool = True) -> Collector:
    c = Collector()
    c.watch(KEY, WindowSpec(stable_window_s=stable, panic_window_s=panic, scraped=scraped))
    return c


def test_aggregate_stable_and_panic() -> None:
    # Knative's TestMetricCollectorAggregate: value i+5 at now+i, windows 6 s / 2 s.
    c = collector(stable=6.0, panic=2.0)
    for i in range(10):
        c.record(KEY, stat(conc=i + 5, rps=i + 5), NOW + i)
    assert c.observe(KEY, "concurrency", NOW + 9) == Observed(stable=11.5, panic=13.5)
    assert c.observe(KEY, "rps", NOW + 9) == Observed(stable=11.5, panic=13.5)


def test_same_second_stats_are_summed() -> None:
    # Three scrapes at t of {10, 20} and four at t+1 → buckets 30 and 40 → 35 and 70.
    c = collector()
    for _ in range(3):
        c.record(KEY, stat(conc=10, rps=20), NOW)
    for _ in range(4):
        c.record(KEY, stat(conc=10, rps=20), NOW + 1)
    assert c.observe(KEY, "concurrency", NOW + 1) == Observed(stable=35, panic=35)
    assert c.observe(KEY, "rps", NOW + 1) == Observed(stable=70, panic=70)


def test_moving_time_trailing_seconds_shrink_the_divisor() -> None:
    c = collector()
    for _ in range(3):
        c.record(KEY, stat(conc=10, rps=20), NOW)
    assert c.observe(KEY, "concurrency", NOW) == Observed(stable=30, panic=30)
    for _ in range(2):
        c.record(KEY, stat(conc=10, rps=20), NOW)
    later = c.observe(KEY, "concurrency", NOW + 55)
    assert later is not None
    assert later.stable == 50
    rps = c.observe(KEY, "rps", NOW + 55)
    assert rps is not None
    assert rps.stable == 100


def test_record_subtracts_proxied_and_evicts_old() -> None:
    c = collector()
    c.record(KEY, stat(conc=100, rps=100), NOW - 70)
    c.record(KEY, stat(conc=20, pconc=10, rps=30, prps=20), NOW)
    assert c.observe(KEY, "concurrency", NOW) == Observed(stable=10, panic=10)
    assert c.observe(KEY, "rps", NOW) == Observed(stable=10, panic=10)


def test_fresh_collection_has_no_data() -> None:
    assert collector().observe(KEY, "concurrency", NOW) is None


def test_not_collecting_has_no_data_and_records_nothing() -> None:
    c = Collector()
    assert not c.record(KEY, stat(conc=1), NOW)
    assert c.observe(KEY, "concurrency", NOW) is None


def test_no_data_for_a_whole_stable_window() -> None:
    c = collector()
    c.record(KEY, stat(conc=5), NOW)
    assert c.observe(KEY, "concurrency", NOW + 60) is not None
    assert c.observe(KEY, "concurrency", NOW + 61) is None


def test_unscraped_revision_with_no_stats_is_idle_not_unknown() -> None:
    # TBC = -1: nothing scrapes it, only activators report; silence means no load (§1.2).
    assert collector(scraped=False).observe(KEY, "concurrency", NOW) == Observed(
        stable=0.0, panic=0.0
    )


@pytest.mark.parametrize(
    ("new", "keeps_history"),
    [
        pytest.param(WindowSpec(stable_window_s=60, panic_window_s=6), True, id="same-spec"),
        pytest.param(
            WindowSpec(stable_window_s=60, panic_window_s=6, scraped=False),
            True,
            id="scraped-flag-only",
        ),
        pytest.param(WindowSpec(stable_window_s=30, panic_window_s=3), False, id="new-windows"),
        pytest.param(
            WindowSpec(stable_window_s=60, panic_window_s=6, weighted=True),
            False,
            id="new-aggregation",
        ),
    ],
)
def test_watch_again(new: WindowSpec, keeps_history: bool) -> None:
    c = collector()
    c.record(KEY, stat(conc=7), NOW)
    c.watch(KEY, new)
    observed = c.observe(KEY, "concurrency", NOW)
    if keeps_history:
        assert observed == Observed(stable=7, panic=7)
    else:
        assert observed is None or observed == Observed(stable=0, panic=0)


def test_weighted_aggregation() -> None:
    c = Collector()
    c.watch(KEY, WindowSpec(stable_window_s=60, panic_window_s=6, weighted=True))
    c.record(KEY, stat(conc=10), NOW)
    observed = c.observe(KEY, "concurrency", NOW)
    assert observed is not None
    # Window 60 → m = 0.2; window 6 → m = 0.78456: one bucket of 10 weighs 10·m.
    assert observed.stable == pytest.approx(2.0)
    assert observed.panic == pytest.approx(7.8456, abs=1e-4)


def test_forget_and_snapshot() -> None:
    c = collector()
    c.record(KEY, stat(conc=4, rps=8), NOW)
    assert c.snapshot(KEY, NOW) == {
        "stable_concurrency": 4,
        "panic_concurrency": 4,
        "stable_rps": 8,
        "panic_rps": 8,
    }
    c.forget(KEY)
    assert KEY not in c
    assert c.snapshot(KEY, NOW) is None

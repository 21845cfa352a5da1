"""The concurrency reporter: Knative's four sequences (reference §5.7), with no clock at all."""

from __future__ import annotations

import pytest

from activator.reporter import ConcurrencyReporter
from cluster.spec import RevisionKey
from metrics.stat import WireStat

REV1 = RevisionKey("default", "rev1")
REV2 = RevisionKey("default", "rev2")
T0 = 1000.0


def figures(stats: list[WireStat]) -> list[tuple[str, float, float]]:
    return [(s.revision, s.stat.average_concurrent_requests, s.stat.request_count) for s in stats]


def test_first_request_of_each_revision_is_reported_at_once() -> None:
    rep = ConcurrencyReporter("activator-0")
    first = rep.request_in(REV1, T0, wall=1_700_000_000.5)
    second = rep.request_in(REV2, T0)
    assert first is not None
    assert second is not None
    assert figures([first, second]) == [("rev1", 1.0, 1.0), ("rev2", 1.0, 1.0)]
    assert first.stat.pod_name == "activator-0"
    assert first.stat.timestamp == 1_700_000_000
    assert rep.request_in(REV1, T0) is None  # not new any more


def test_first_adj_subtracts_the_immediate_request_once() -> None:
    # start@0, end@1, start@1, end@2, tick@2 → (1, 1) then (0, 1)
    rep = ConcurrencyReporter("a")
    emits = [rep.request_in(REV1, T0)]
    rep.request_out(REV1, T0 + 1)
    emits.append(rep.request_in(REV1, T0 + 1))
    rep.request_out(REV1, T0 + 2)
    tick = rep.report(T0 + 2)
    assert figures([e for e in emits if e is not None] + tick) == [
        ("rev1", 1.0, 1.0),
        ("rev1", 0.0, 1.0),
    ]


def test_concurrency_carries_over_periods() -> None:
    # start@0, start@0, tick@1, tick@2 → (1, 1), (1, 1), (2, 0)
    rep = ConcurrencyReporter("a")
    emits = [rep.request_in(REV1, T0), rep.request_in(REV1, T0)]
    first = [e for e in emits if e is not None]
    assert figures(first + rep.report(T0 + 1) + rep.report(T0 + 2)) == [
        ("rev1", 1.0, 1.0),
        ("rev1", 1.0, 1.0),
        ("rev1", 2.0, 0.0),
    ]


def test_idle_revision_is_dropped_and_signals_again() -> None:
    # start@0, end@1, tick@1, tick@2, start@3 → (1, 1), (0, 0), (0, 0), (1, 1)
    rep = ConcurrencyReporter("a")
    out = [rep.request_in(REV1, T0)]
    rep.request_out(REV1, T0 + 1)
    ticks = rep.report(T0 + 1) + rep.report(T0 + 2)
    assert len(rep) == 0
    out2 = rep.request_in(REV1, T0 + 3)
    got = [e for e in out if e is not None] + ticks + ([out2] if out2 else [])
    assert figures(got) == [
        ("rev1", 1.0, 1.0),
        ("rev1", 0.0, 0.0),
        ("rev1", 0.0, 0.0),
        ("rev1", 1.0, 1.0),
    ]


@pytest.mark.parametrize(
    ("hold_s", "want_conc"),
    [pytest.param(0.5, 0.0, id="half-period-clamped-at-zero"), pytest.param(2.0, 0.0, id="whole")],
)
def test_reported_concurrency_is_never_negative(hold_s: float, want_conc: float) -> None:
    rep = ConcurrencyReporter("a")
    rep.request_in(REV1, T0)
    rep.request_out(REV1, T0 + min(hold_s, 1.0))
    (stat,) = rep.report(T0 + 1)
    assert stat.stat.average_concurrent_requests == want_conc
    assert stat.stat.request_count == 0.0


def test_time_weighted_average() -> None:
    rep = ConcurrencyReporter("a")
    rep.request_in(REV1, T0)
    rep.report(T0 + 1)  # consumes first_adj
    rep.request_in(REV1, T0 + 1.5)  # two in flight for the last half
    (stat,) = rep.report(T0 + 2)
    assert stat.stat.average_concurrent_requests == pytest.approx(1.5)
    assert stat.stat.request_count == 1.0

"""``zeroserve status``'s shadow table from the activator's metrics (zeroserve.shadow_status)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from activator.shadow_compare import Comparison, Outcome, ShadowMetrics
from zeroserve.shadow_status import metrics_url, parse, render

LABELS = ("default", "iris", "iris-v2")


def test_the_table_reads_the_activators_shadow_metrics() -> None:
    registry = CollectorRegistry()
    m = ShadowMetrics(registry)
    fast, slow = Outcome(200, 0.002, b"{}"), Outcome(200, 0.004, b"{}")
    for verdict in [Comparison(True, "equal")] * 7 + [
        Comparison(True, "different"),
        Comparison(False, "not_compared"),
        Comparison(True, "not_compared"),
    ]:
        m.compared(LABELS, fast, slow, verdict)
    m.outcome(LABELS, "dropped")
    m.outcome(LABELS, "shadow_failed")
    m.outcome(LABELS, "body_too_large")
    [row] = parse(generate_latest(registry).decode())
    assert (row.namespace, row.service, row.revision) == LABELS
    assert row.compared == 10
    assert row.agreement == 0.8  # 7 equal + 1 same status with nothing to compare
    assert (row.status_mismatch, row.body_different) == (1, 1)
    assert row.mean_latency("shadow") == pytest.approx(0.004)
    table = render([row])
    assert table.splitlines()[1].split() == [
        "default/iris-v2", "iris", "10", "80.0%", "1", "1", "1", "1", "1", "2.0ms/4.0ms",
    ]  # fmt: skip
    assert render([]) == ""
    assert parse("") == []


def test_the_metrics_url_is_beside_the_revisions_url() -> None:
    assert metrics_url("http://127.0.0.1:9090/v1/revisions") == "http://127.0.0.1:9090/metrics"

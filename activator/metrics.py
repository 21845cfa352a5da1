"""The activator's Prometheus metrics, in a registry of its own (one per activator instance).

The per-request ones (requests by code class, in flight, queued, latency, cold-start wait) are
plain counters on :class:`RevisionMetrics`, exported by a collector at scrape time: a request
costs a few integer updates and no lock (a prometheus_client child update costs microseconds,
and each child holds a lock per value: memory per revision too). Names, labels and buckets are
those of the Counter/Gauge/Histogram they replace, so dashboards read them unchanged.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cluster.spec import Revision

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_LABELS = ["namespace", "service", "revision"]


def _le(bounds: Sequence[float]) -> tuple[str, ...]:
    """The ``le`` labels, as prometheus_client's Histogram writes them (1 → "1.0")."""
    return (*(repr(float(b)) for b in bounds), "+Inf")


_LATENCY_LE = _le(_LATENCY_BUCKETS)
_WAIT_LE = _le(_WAIT_BUCKETS)


def code_class(status: int) -> str:
    return f"{status // 100}xx"


class RevisionMetrics:
    """One revision's counts. The handler updates the fields directly (``in_flight``,
    ``queued``) or through :meth:`request_done` and :meth:`cold_start_waited`."""

    __slots__ = (
        "by_class",
        "cold_counts",
        "cold_sum",
        "in_flight",
        "labels",
        "latency_counts",
        "latency_sum",
        "queued",
    )

    def __init__(self, revision: Revision) -> None:
        self.labels = (revision.namespace, revision.service, revision.name)
        self.in_flight = 0
        self.queued = 0
        self.by_class = [0] * 6  # index = status // 100 (1..5)
        self.latency_counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # per bucket; +Inf last
        self.latency_sum = 0.0
        self.cold_counts: list[int] | None = None  # made on the first cold start
        self.cold_sum = 0.0

    def request_done(self, status: int, latency_s: float) -> None:
        """A request of this revision was answered with ``status`` after ``latency_s``."""
        c = status // 100
        self.by_class[c if 0 < c < 6 else 5] += 1
        self.latency_counts[bisect_left(_LATENCY_BUCKETS, latency_s)] += 1
        self.latency_sum += latency_s

    def cold_start_waited(self, seconds: float) -> None:
        """A request that found no ready pod got one after ``seconds``."""
        if self.cold_counts is None:
            self.cold_counts = [0] * (len(_WAIT_BUCKETS) + 1)
        self.cold_counts[bisect_left(_WAIT_BUCKETS, seconds)] += 1
        self.cold_sum += seconds


def _buckets(les: Sequence[str], counts: Sequence[int] | None) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from per-bucket counts (None: all zero)."""
    out: list[tuple[str, float]] = []
    total = 0
    for i, le in enumerate(les):
        if counts is not None:
            total += counts[i]
        out.append((le, total))
    return out


class _RequestCollector(Collector):
    def __init__(self, owner: ActivatorMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        revisions = list(self._owner.revisions())
        requests = CounterMetricFamily(
            "activator_requests",
            "Requests answered, by revision and status class",
            labels=[*_LABELS, "code"],
        )
        for rm in revisions:
            for c in range(1, 6):
                if rm.by_class[c]:
                    requests.add_metric([*rm.labels, f"{c}xx"], rm.by_class[c])
        for code, n in sorted(self._owner.unrouted_counts.items()):
            requests.add_metric(["", "", "", code], n)
        yield requests
        in_flight = GaugeMetricFamily(
            "activator_requests_in_flight",
            "Requests in the activator (queued or proxied)",
            labels=_LABELS,
        )
        queued = GaugeMetricFamily(
            "activator_requests_queued",
            "Requests waiting for capacity (a ready pod or a free slot)",
            labels=_LABELS,
        )
        latency = HistogramMetricFamily(
            "activator_request_latency_seconds",
            "Time from arrival to the end of the response",
            labels=_LABELS,
        )
        cold = HistogramMetricFamily(
            "activator_cold_start_wait_seconds",
            "Time requests that arrived while the revision had no ready pod waited for one",
            labels=_LABELS,
        )
        for rm in revisions:
            labels = list(rm.labels)
            in_flight.add_metric(labels, rm.in_flight)
            queued.add_metric(labels, rm.queued)
            latency.add_metric(labels, _buckets(_LATENCY_LE, rm.latency_counts), rm.latency_sum)
            cold.add_metric(labels, _buckets(_WAIT_LE, rm.cold_counts), rm.cold_sum)
        yield in_flight
        yield queued
        yield latency
        yield cold


class ActivatorMetrics:
    """Requests by namespace/service/revision/code class, in flight, queued, latency and the
    cold-start wait (how long requests that found no ready pod waited for one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._revisions: dict[tuple[str, str], RevisionMetrics] = {}
        self.unrouted_counts: dict[str, int] = {}
        self.registry.register(_RequestCollector(self))
        self.stat_batches = Counter(
            "activator_stat_batches",
            "Stat batches handed to the autoscaler sink",
            registry=self.registry,
        )

    def revision(self, revision: Revision) -> RevisionMetrics:
        key = (revision.namespace, revision.name)
        rm = self._revisions.get(key)
        if rm is None or rm.labels[1] != revision.service:
            rm = self._revisions[key] = RevisionMetrics(revision)
        return rm

    def revisions(self) -> Iterator[RevisionMetrics]:
        return iter(self._revisions.values())

    def unrouted(self, status: int) -> None:
        """A request answered before it had a revision (404, probes aside)."""
        code = code_class(status)
        self.unrouted_counts[code] = self.unrouted_counts.get(code, 0) + 1

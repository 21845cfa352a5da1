"""The activator's Prometheus metrics, in a registry of its own (one per activator instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cluster.spec import Revision

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


def code_class(status: int) -> str:
    return f"{status // 100}xx"


class RevisionMetrics:
    """The label children of one revision, resolved once (label lookups cost on the hot path)."""

    __slots__ = ("_by_code", "_m", "cold_start_wait", "in_flight", "labels", "latency", "queued")

    def __init__(self, m: ActivatorMetrics, revision: Revision) -> None:
        self._m = m
        self.labels = (revision.namespace, revision.service, revision.name)
        self.in_flight = m.in_flight.labels(*self.labels)
        self.queued = m.queued.labels(*self.labels)
        self.latency = m.latency.labels(*self.labels)
        self.cold_start_wait = m.cold_start_wait.labels(*self.labels)
        self._by_code: dict[int, Counter] = {}

    def request_done(self, status: int, latency_s: float) -> None:
        counter = self._by_code.get(status)
        if counter is None:
            counter = self._by_code[status] = self._m.requests.labels(
                *self.labels, code_class(status)
            )
        counter.inc()
        self.latency.observe(latency_s)


class ActivatorMetrics:
    """Requests by namespace/service/revision/code class, in flight, queued, latency and the
    cold-start wait (how long requests that found no ready pod waited for one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("namespace", "service", "revision")
        self.requests = Counter(
            "activator_requests",
            "Requests answered, by revision and status class",
            (*labels, "code"),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "activator_requests_in_flight",
            "Requests in the activator (queued or proxied)",
            labels,
            registry=self.registry,
        )
        self.queued = Gauge(
            "activator_requests_queued",
            "Requests waiting for capacity (a ready pod or a free slot)",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "activator_request_latency_seconds",
            "Time from arrival to the end of the response",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_start_wait = Histogram(
            "activator_cold_start_wait_seconds",
            "Time requests that arrived while the revision had no ready pod waited for one",
            labels,
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.stat_batches = Counter(
            "activator_stat_batches",
            "Stat batches handed to the autoscaler sink",
            registry=self.registry,
        )
        self._revisions: dict[tuple[str, str], RevisionMetrics] = {}

    def revision(self, revision: Revision) -> RevisionMetrics:
        key = (revision.namespace, revision.name)
        rm = self._revisions.get(key)
        if rm is None or rm.labels[1] != revision.service:
            rm = self._revisions[key] = RevisionMetrics(self, revision)
        return rm

    def unrouted(self, status: int) -> None:
        """A request answered before it had a revision (404, probes aside)."""
        self.requests.labels("", "", "", code_class(status)).inc()

"""Prometheus metrics of one queue-proxy, in its own registry (so in-process tests don't collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

REFUSAL_REASONS = (
    "queue_full",
    "timeout",
    "upstream_connect",
    "upstream_error",
    "bad_request",
    "client_disconnected",
    "header_timeout",  # a request head not complete within QUEUE_HEADER_TIMEOUT_SECONDS: 408
    "connection_limit",  # a connection over QUEUE_MAX_CONNECTIONS: closed at once, unanswered
)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _RequestCollector(Collector):
    """Exports the per-request counts that :meth:`QueueMetrics.observe` keeps in plain lists."""

    def __init__(self, owner: QueueMetrics, labels: tuple[str, ...], values: tuple[str, ...]):
        self._owner = owner
        self._labels = labels
        self._values = values

    def collect(self) -> Iterator[Metric]:
        o = self._owner
        requests = CounterMetricFamily(
            "queue_proxy_requests",
            "Requests answered, by status class (probes excluded).",
            labels=[*self._labels, "code_class"],
        )
        for c in range(1, 6):
            requests.add_metric([*self._values, f"{c}xx"], o.by_class[c])
        yield requests
        latency = HistogramMetricFamily(
            "queue_proxy_request_duration_seconds",
            "Time from request arrival to the end of its response (kn.serving.invocation.duration).",
            labels=list(self._labels),
        )
        cumulative, buckets = 0, []
        edges = (*(str(float(b)) for b in _BUCKETS), "+Inf")
        for le, n in zip(edges, o.latency_counts, strict=True):
            cumulative += n
            buckets.append((le, cumulative))
        latency.add_metric(list(self._values), buckets, o.latency_sum)
        yield latency


class QueueMetrics:
    """The queue-proxy's instruments.

    The per-request ones (requests by class, the latency histogram) are plain counters that a
    collector exports at scrape time: ``observe`` costs a few list updates, no locks.
    """

    def __init__(self, *, namespace: str, revision: str, pod: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("namespace", "revision", "pod")
        values = (namespace, revision, pod)
        self.by_class = [0] * 6  # index = status // 100
        self.latency_counts = [0] * (len(_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.latency_sum = 0.0
        self.registry.register(_RequestCollector(self, labels, values))
        refusals = Counter(
            "queue_proxy_refusals",
            "Requests the queue-proxy answered itself with an error, by reason.",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.refusal = {r: refusals.labels(*values, r) for r in REFUSAL_REASONS}
        self._queue_depth = Gauge(
            "queue_proxy_queue_depth",
            "Requests in the breaker: waiting plus active (kn.serving.queue.depth).",
            labels,
            registry=self.registry,
        ).labels(*values)
        self._in_flight = Gauge(
            "queue_proxy_in_flight_requests",
            "Requests being served by the model server now.",
            labels,
            registry=self.registry,
        ).labels(*values)
        self.gpu_utilization = Gauge(
            "queue_proxy_gpu_utilization_ratio",
            "GPU utilisation over the last sample period (0-1), per GPU this pod sees.",
            [*labels, "gpu"],
            registry=self.registry,
        )
        self.gpu_memory_used = Gauge(
            "queue_proxy_gpu_memory_used_bytes",
            "GPU memory in use, per GPU this pod sees.",
            [*labels, "gpu"],
            registry=self.registry,
        )
        self.gpu_memory_total = Gauge(
            "queue_proxy_gpu_memory_total_bytes",
            "GPU memory in all, per GPU this pod sees.",
            [*labels, "gpu"],
            registry=self.registry,
        )
        self.gpu_labels = values

    def observe(self, status: int, seconds: float) -> None:
        c = status // 100
        self.by_class[1 if c < 1 else 5 if c > 5 else c] += 1
        i = 0  # the first bucket whose bound is not below seconds (bisect_left, unrolled)
        for bound in _BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.latency_counts[i] += 1
        self.latency_sum += seconds

    def track(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the gauges from the live objects at scrape time (no per-request cost)."""
        self._queue_depth.set_function(queue_depth)
        self._in_flight.set_function(in_flight)

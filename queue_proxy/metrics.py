"""Prometheus metrics of one queue-proxy, in its own registry (so in-process tests don't collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REFUSAL_REASONS = (
    "queue_full",
    "timeout",
    "upstream_connect",
    "upstream_error",
    "bad_request",
    "client_disconnected",
    "upgrade_unsupported",
)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class QueueMetrics:
    """The queue-proxy's instruments; label children are bound once (hot path: one call each)."""

    def __init__(self, *, namespace: str, revision: str, pod: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("namespace", "revision", "pod")
        values = (namespace, revision, pod)
        requests = Counter(
            "queue_proxy_requests",
            "Requests answered, by status class (probes excluded).",
            [*labels, "code_class"],
            registry=self.registry,
        )
        self._by_class = {c: requests.labels(*values, f"{c}xx") for c in (1, 2, 3, 4, 5)}
        self.latency = Histogram(
            "queue_proxy_request_duration_seconds",
            "Time from request arrival to the end of its response (kn.serving.invocation.duration).",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        ).labels(*values)
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
        self._by_class[min(max(status // 100, 1), 5)].inc()
        self.latency.observe(seconds)

    def track(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the gauges from the live objects at scrape time (no per-request cost)."""
        self._queue_depth.set_function(queue_depth)
        self._in_flight.set_function(in_flight)

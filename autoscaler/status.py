"""The autoscaler's status and metrics server (:9090): ``/v1/revisions`` JSON and Prometheus ``/metrics``.

Per-revision gauges are not updated on every tick: a custom collector reads the revisions' status
when Prometheus scrapes, so a tick over 10,000 revisions pays nothing for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleChange:
    """One change of a revision's scale: from, to, why, and when (unix seconds)."""

    from_scale: int
    to_scale: int
    reason: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_scale, "to": self.to_scale, "reason": self.reason, "at": self.at}


class ColdStartSummary(Protocol):
    """A replica's last cold start, where the runtime records them (the local supervisor):
    ``{"pod", "started_at", "total_s", "phases": {name: seconds}}``."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RevisionStatus:
    """What ``/v1/revisions`` shows for one revision (see docs/autoscaler.md for the schema)."""

    namespace: str
    revision: str
    desired: int
    applied: int | None
    ready: int | None
    panicking: bool
    metric: str
    target: float
    excess_burst_capacity: float
    stable_concurrency: float
    panic_concurrency: float
    stable_rps: float
    panic_rps: float
    has_data: bool
    last_change: ScaleChange | None
    not_ready_reason: str | None = None
    """Why the revision's replicas cannot start or be ready, where the runtime knows (its
    model artifact's fetch failing: ``s3://models/iris/model.joblib: 403 AccessDenied``)."""
    last_cold_start: ColdStartSummary | None = None
    """The revision's latest replica start by phase, where the runtime records them."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "revision": self.revision,
            "desired": self.desired,
            "applied": self.applied,
            "ready": self.ready,
            "panicking": self.panicking,
            "metric": self.metric,
            "target": self.target,
            "excess_burst_capacity": self.excess_burst_capacity,
            "observed": {
                "stable_concurrency": self.stable_concurrency,
                "panic_concurrency": self.panic_concurrency,
                "stable_rps": self.stable_rps,
                "panic_rps": self.panic_rps,
                "has_data": self.has_data,
            },
            "last_change": self.last_change.to_dict() if self.last_change else None,
            "not_ready_reason": self.not_ready_reason,
            "last_cold_start": self.last_cold_start.to_dict() if self.last_cold_start else None,
        }


StatusSource = Callable[[], Sequence[RevisionStatus]]

_LABELS = ("namespace", "revision")
_GAUGES: tuple[tuple[str, str, Callable[[RevisionStatus], float]], ...] = (
    (
        "autoscaler_desired_pods",
        "Pods the autoscaler wants (-1: no decision yet).",
        lambda s: s.desired,
    ),
    (
        "autoscaler_requested_pods",
        "Pods last asked of the scale target.",
        lambda s: -1 if s.applied is None else s.applied,
    ),
    (
        "autoscaler_actual_pods",
        "Ready pods at the last decision.",
        lambda s: -1 if s.ready is None else s.ready,
    ),
    (
        "autoscaler_panic_mode",
        "1 while the revision is in panic mode.",
        lambda s: 1.0 if s.panicking else 0.0,
    ),
    (
        "autoscaler_stable_request_concurrency",
        "Average concurrency over the stable window.",
        lambda s: s.stable_concurrency,
    ),
    (
        "autoscaler_panic_request_concurrency",
        "Average concurrency over the panic window.",
        lambda s: s.panic_concurrency,
    ),
    (
        "autoscaler_stable_requests_per_second",
        "Average rps over the stable window.",
        lambda s: s.stable_rps,
    ),
    (
        "autoscaler_panic_requests_per_second",
        "Average rps over the panic window.",
        lambda s: s.panic_rps,
    ),
    (
        "autoscaler_target_per_pod",
        "Target value per pod of the scaling metric.",
        lambda s: s.target,
    ),
    (
        "autoscaler_excess_burst_capacity",
        "Excess burst capacity at the last decision.",
        lambda s: s.excess_burst_capacity,
    ),
)


class _RevisionCollector(Collector):
    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        rows = self._source()
        for name, doc, value in _GAUGES:
            family = GaugeMetricFamily(name, doc, labels=_LABELS)
            for row in rows:
                family.add_metric((row.namespace, row.revision), float(value(row)))
            yield family


class AutoscalerMetrics:
    """The autoscaler's Prometheus metrics, in their own registry (one per autoscaler instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.scrape_errors = Counter(
            "autoscaler_scrape_errors",
            "Failed scrapes of a revision's pods (nothing recorded for that second).",
            _LABELS,
            registry=self.registry,
        )
        self.scrape_duration = Histogram(
            "autoscaler_scrape_duration_seconds",
            "Time to scrape one revision's sampled pods.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0),
        )
        self.decision_duration = Histogram(
            "autoscaler_decision_duration_seconds",
            "Time of one decision tick over all revisions.",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0),
        )
        self.scale_changes = Counter(
            "autoscaler_scale_changes",
            "Scale changes asked of the scale target, by reason.",
            ("reason",),
            registry=self.registry,
        )

    def watch_revisions(self, source: StatusSource) -> None:
        """Export the per-revision gauges from ``source`` at each Prometheus scrape."""
        self.registry.register(_RevisionCollector(source))

    def forget_revision(self, namespace: str, revision: str) -> None:
        with contextlib.suppress(KeyError):
            self.scrape_errors.remove(namespace, revision)

    def render(self) -> bytes:
        return generate_latest(self.registry)


SOURCE_KEY: web.AppKey[StatusSource] = web.AppKey("status_source")
METRICS_KEY: web.AppKey[AutoscalerMetrics] = web.AppKey("autoscaler_metrics")


async def handle_revisions(request: web.Request) -> web.Response:
    rows = request.app[SOURCE_KEY]()
    return web.json_response({"revisions": [r.to_dict() for r in rows]})


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_status_app(source: StatusSource, metrics: AutoscalerMetrics) -> web.Application:
    """The aiohttp app served on :9090."""
    app = web.Application()
    app[SOURCE_KEY] = source
    app[METRICS_KEY] = metrics
    app.router.add_get("/v1/revisions", handle_revisions)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    return app

"""OpenTelemetry tracing of a component's requests (docs/tracing.md): a :class:`Tracer` per
process, configured (and configured again, without a restart) from
:class:`cluster.observability.Tracing`.

Off, it costs a request one attribute test (``tracer.on``) and OpenTelemetry is not even
imported (its SDK and exporter take ~65 ms to import: a cold start's queue-proxy must not pay
that for nothing). On, each request is sampled once, at arrival (:meth:`Tracer.begin`): an
incoming ``traceparent`` (W3C Trace Context; B3, single or multiple headers, is accepted too)
decides by its sampled flag, as a parent-based sampler; a request without one is sampled at
``tracing-sampling-rate``. A request that is not sampled is not traced at all (its headers pass
through as they came); one that is gets spans, exported in batches by OTLP/HTTP protobuf from a
background thread, and the proxied request carries its context in ``traceparent``.

Spans are made with explicit times where the request's own clock says when something began
(the loop time of its arrival, turned into wall-clock nanoseconds: :meth:`Tracer.wall_ns`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.observability import (
    TRACING_OFF,
    ObservabilityError,
    Tracing,
    folder_stamp,
    parse_tracing,
    read_folder,
)
from dataplane.api import Exchange

if TYPE_CHECKING:  # (imported only when tracing is on)
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

log = logging.getLogger("zeroserve.tracing")

PROPAGATED = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled")
"""The request headers a trace context is read from (lower case)."""


class Tracer:
    """One component's tracing (see the module docstring). ``on`` is the one thing the hot path
    reads; the rest is used only for requests that are traced."""

    def __init__(self, service: str, attributes: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.attributes = dict(attributes or {})
        self.on = False
        self.tracing = TRACING_OFF
        self._rate = 0.0
        self._provider: Any = None
        self._tracer: Any = None
        self._extractor: Any = None
        self._injector: Any = None

    def configure(self, tracing: Tracing) -> None:
        """Apply new settings: a new exporter when the endpoint changes, off when the protocol
        is ``none``. The old provider is flushed and shut down in a thread of its own."""
        if tracing == self.tracing:
            return
        old, same_endpoint = self._provider, tracing.endpoint == self.tracing.endpoint
        self.tracing = tracing
        self._rate = tracing.sampling_rate
        if not tracing.enabled:
            self._provider = self._tracer = None
            self.on = False
        elif old is None or not same_endpoint:
            self._provider, self._tracer = self._build(tracing.endpoint)
            self.on = True
        else:
            old = None  # (only the rate changed: the same provider goes on)
        if old is not None:
            threading.Thread(target=old.shutdown, name="tracing-shutdown", daemon=True).start()
        log.info(
            "tracing configured",
            extra={
                "protocol": tracing.protocol,
                "endpoint": tracing.endpoint,
                "sampling_rate": tracing.sampling_rate,
            },
        )

    def _build(self, endpoint: str) -> tuple[Any, Any]:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": self.service, **self.attributes})
        # (the sampling is decided in begin(): every span made belongs to a sampled request)
        provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, timeout=10),
                max_queue_size=8192,
                schedule_delay_millis=500,
            )
        )
        w3c = TraceContextTextMapPropagator()
        # W3C last: its context wins over a B3 one when a request carries both
        self._extractor = CompositePropagator([B3MultiFormat(), B3SingleFormat(), w3c])
        self._injector = w3c
        return provider, provider.get_tracer("zeroserve." + self.service)

    def begin(self, headers: Iterable[tuple[str, str]]) -> Context | None:
        """The parent context of a request to trace, or None when it is not traced (tracing
        off, an incoming context that is not sampled, or not sampled at the rate)."""
        if not self.on:
            return None
        from opentelemetry import trace

        carrier = {k.lower(): v for k, v in headers if k.lower() in PROPAGATED}
        ctx = self._extractor.extract(carrier)
        parent = trace.get_current_span(ctx).get_span_context()
        if parent.is_valid:
            return ctx if parent.trace_flags.sampled else None
        rate = self._rate
        return ctx if rate >= 1.0 or random.random() < rate else None

    def span(
        self,
        name: str,
        parent: Context | Span,
        *,
        kind: str = "internal",
        start_ns: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        """A span started under ``parent`` (a context, or a span), ``kind`` one of server,
        client, internal; end it with ``span.end()``."""
        from opentelemetry import trace

        ctx = trace.set_span_in_context(parent) if isinstance(parent, trace.Span) else parent
        kinds = {
            "server": trace.SpanKind.SERVER,
            "client": trace.SpanKind.CLIENT,
            "internal": trace.SpanKind.INTERNAL,
        }
        return self._tracer.start_span(  # type: ignore[no-any-return]
            name, context=ctx, kind=kinds[kind], start_time=start_ns, attributes=attributes
        )

    def request_span(
        self,
        name: str,
        context: Context,
        ex: Exchange,
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        """A request's server span, from its arrival: OpenTelemetry's HTTP attributes
        (:func:`server_attributes`), ``attributes``, and this tracer's own (pod, revision)."""
        now = asyncio.get_running_loop().time()
        return self.span(
            name,
            context,
            kind="server",
            start_ns=self.wall_ns(ex.arrived_at, now),
            attributes={
                **server_attributes(ex.method, ex.target, ex.client),
                **(attributes or {}),
                **self.attributes,
            },
        )

    def headers(self, span: Span) -> tuple[tuple[str, str], ...]:
        """``traceparent`` (and ``tracestate``) naming ``span`` as the parent, for the request
        proxied under it."""
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self._injector.inject(carrier, context=trace.set_span_in_context(span))
        return tuple(carrier.items())

    @staticmethod
    def wall_ns(at: float, now: float) -> int:
        """Wall-clock nanoseconds of loop time ``at``, the loop's time being ``now``."""
        return time.time_ns() - int((now - at) * 1e9)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is buffered (tests, and before exit)."""
        if self._provider is None:
            return True
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def close(self) -> None:
        provider, self._provider, self._tracer, self.on = self._provider, None, None, False
        if provider is not None:
            provider.shutdown()


TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
"""Removed from a traced request before it is proxied with its own ``traceparent``."""

_MODEL = re.compile(r"/v[12]/models/([^/:?#]+)")


def server_attributes(method: str, target: str, client: str) -> dict[str, Any]:
    """A request's attributes by OpenTelemetry's HTTP conventions, and the model it names
    (``/v1/models/<m>...``, ``/v2/models/<m>/...``) as ``zeroserve.model``."""
    path, _, query = target.partition("?")
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "client.address": client,
    }
    if query:
        attributes["url.query"] = query
    m = _MODEL.match(path)
    if m is not None:
        attributes["zeroserve.model"] = m.group(1)
    return attributes


def end_span(span: Span, status: int) -> None:
    """End a request's span with its status (an error from 500 on, as the conventions say for
    a server; 499: the client left)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
    span.end()


async def watch_folder(tracer: Tracer, folder: Path, interval_s: float = 1.0) -> None:
    """Configure ``tracer`` from a folder of one file per ``config-observability`` key (a
    mounted ConfigMap, or the local runtime's), and again whenever a file changes (a stat per
    ``interval_s``). Invalid settings are logged and the last good ones stay in force."""
    stamp: tuple[float, ...] | None = None
    while True:
        now = folder_stamp(folder)
        if now != stamp:
            stamp = now
            try:
                tracer.configure(parse_tracing(read_folder(folder), strict=False))
            except ObservabilityError as exc:
                log.error(
                    "observability config rejected, keeping the last good one",
                    extra={"folder": str(folder), "error": str(exc)},
                )
            except OSError as exc:
                log.error("cannot read the observability config", extra={"error": str(exc)})
        await asyncio.sleep(interval_s)


class ColdStartTraces:
    """The ``throttler_try`` spans of requests that found a revision with no ready replica, and
    the ``cold_start`` span each gets when it is known where that cold start went (the local
    runtime's :class:`cluster.local.coldstart.ColdStarts`, once the replica is ready and its
    phases are read: :meth:`cold_start`). Its events, in order and at their own times:
    ``scale_decision``, ``replica_started`` (the process exists), each phase the model server
    reported (``imports``, ``accelerator_init``, ``fetch``, ``load``, ``warmup``), ``ready``.
    On Kubernetes the events are what the pod records (:mod:`cluster.kubernetes.podstarts`:
    ``pod_created``, ``scheduled``, ``initialized``, ``container_started``, ``ready``, …).
    A span not claimed within :attr:`keep_s` is forgotten."""

    keep_s = 300.0

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._waiting: dict[tuple[str, str], list[tuple[float, Span]]] = {}

    def waiting(self, namespace: str, revision: str, span: Span) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._waiting.items() if now - v[0][0] > self.keep_s]:
            del self._waiting[key]
        self._waiting.setdefault((namespace, revision), []).append((now, span))

    def wants(self, namespace: str, revision: str) -> bool:
        """Whether a request waits for a start of the revision (with tracing on)."""
        return self.tracer.on and (namespace, revision) in self._waiting

    def cold_start(
        self, namespace: str, revision: str, started_at: float, phases: Iterable[tuple[str, float]]
    ) -> None:
        """A replica of the revision was started at ``started_at`` (unix seconds, the scale
        decision) and went through ``phases`` (name, seconds) in order (the local runtime)."""
        at = started_at
        events: list[tuple[str, float, dict[str, Any]]] = [("scale_decision", at, {})]
        for phase, seconds in phases:
            at += seconds
            name = "replica_started" if phase == "spawn" else phase
            events.append((name, at, {"zeroserve.phase_seconds": seconds}))
        self.started(namespace, revision, events, at)

    def started(
        self,
        namespace: str,
        revision: str,
        events: Sequence[tuple[str, float, dict[str, Any]]],
        ended_at: float,
    ) -> None:
        """A replica of the revision became ready at ``ended_at`` after ``events`` (name, unix
        seconds, attributes; in order): each waiting request's ``cold_start`` span, from the
        first event to ``ended_at``. (On Kubernetes: :mod:`cluster.kubernetes.podstarts`.)"""
        waiting = self._waiting.pop((namespace, revision), [])
        if not waiting or not self.tracer.on or not events:
            return
        attributes = {"k8s.namespace.name": namespace, "zeroserve.revision": revision}
        start_ns = int(events[0][1] * 1e9)
        for _, parent in waiting:
            span = self.tracer.span("cold_start", parent, start_ns=start_ns, attributes=attributes)
            for name, ts, attrs in events:
                span.add_event(name, attrs, timestamp=int(ts * 1e9))
            span.end(end_time=int(ended_at * 1e9))

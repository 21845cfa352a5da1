"""The activator's request handler: probes, routing, stats, throttling, proxying (§4.1).

Order, outermost first (as Knative's chain): health and probe answers (:mod:`dataplane.probes`:
the kubelet's health check, then a ``K-Network-Probe``); routing (404); the
concurrency reporter (a request counts from arrival, queued time included); the throttler
(503 when the queue is full or the revision timeout passes while waiting); the proxy (one retry
on another pod when the connection was refused before any byte went out, else 502).

Two paths through the same steps. The hot path runs in the core's callback, with no task: a
revision slot and a pod slot free now (:meth:`RevisionThrottler.try_admit`), forwarded with
:meth:`Exchange.forward_now` (the core dials the pod when no pooled connection is idle); its
``on_done`` callback gives the slots back and ends the accounting. Everything that waits
(buffering at zero, the breaker queue, the retry on another pod after a refused connection) is a
coroutine, the slow path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

from activator.metrics import ActivatorMetrics, RevisionMetrics
from activator.reporter import ConcurrencyReporter, RevisionCounter
from activator.routing import RouteNotFoundError, Router
from activator.sinks import StatSink
from activator.throttler import (
    Admission,
    QueueFullError,
    RevisionThrottler,
    Throttler,
    WaitTimeoutError,
)
from cluster.spec import Revision, RevisionKey
from dataplane import probes
from dataplane.api import Exchange, ForwardResult, Timeouts, UpstreamConnectError
from dataplane.messages import HeaderNames
from dataplane.route import Route
from dataplane.tracing import (
    TRACE_HEADERS,
    ColdStartTraces,
    Tracer,
    end_span,
)

if TYPE_CHECKING:  # (OpenTelemetry's types: imported only when tracing is on)
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

log = logging.getLogger("zeroserve.activator")

HEALTH_PATH = "/healthz"
# Headers a client must not choose: they would pick a revision or fake a proxied request.
STRIPPED_PREFIXES = ("k-", "knative-serving-")
_HOST_CACHE_MAX = 10_000
# User agents of health checks (Knative's HealthHandler): the kubelet's only.
_HEALTH_AGENTS = probes.KUBELET_AGENTS


MARK_HEADERS = HeaderNames("Host", "K-Network-Probe", "K-Kubelet-Probe", "User-Agent")
"""The headers the activator reads in every request, found in one pass
(``Exchange.find_headers``: the first of each, as Go's ``Header.Get``)."""


def header_marks(found: list[str | None]) -> tuple[str | None, str | None, bool]:
    """What the activator reads in a request, from the values of :data:`MARK_HEADERS`: (the
    ``Host``, the ``K-Network-Probe``, a health check: a non-empty ``K-Kubelet-Probe`` or a
    kubelet user agent)."""
    kubelet_probe = found[2]
    agent = found[3]
    # (the kubelet's agent starts with a k: most agents are ruled out by their first letter)
    kubelet = bool(kubelet_probe) or (
        agent is not None and agent[:1] == "k" and agent.startswith(_HEALTH_AGENTS)
    )
    return found[0], found[1], kubelet


class PathCounts:
    """How many requests took each path since start (tests and debugging; not exported)."""

    __slots__ = ("hot", "refused", "waited")

    def __init__(self) -> None:
        self.hot = 0  # slots free on arrival: forward_now, no task
        self.waited = 0  # no slot free on arrival: a coroutine waits in the throttler
        self.refused = 0  # hot, then the pod refused a new connection: a coroutine retries


NotReadyReason = Callable[[RevisionKey], str | None]
"""Why a revision has no ready pod (``s3://models/iris/model.joblib: 403 AccessDenied``), or None:
appended to the 503 of a request whose wait for a pod timed out."""


def _dead_counter() -> RevisionCounter:
    counter = RevisionCounter(0.0)
    counter.live = False
    return counter


class _Lane:
    """What the handler needs of one revision, looked up once per route table."""

    __slots__ = ("counter", "key", "metrics", "revision", "route", "throttler", "timeouts")

    def __init__(
        self,
        revision: Revision,
        throttler: RevisionThrottler,
        metrics: RevisionMetrics,
        tee: object = None,
    ) -> None:
        self.revision = revision
        self.key: RevisionKey = revision.key
        self.throttler = throttler
        self.metrics = metrics
        # the reporter's counter while live (a counter with requests in is never dropped, so a
        # request counts out on the counter it counted in on)
        self.counter = _dead_counter()
        self.timeouts = Timeouts(
            total_s=revision.timeout_s,
            response_start_s=revision.response_start_timeout_s,
            idle_s=revision.idle_timeout_s,
            body_prefix="activator ",
        )
        # the header edits and timeouts of its forwards, made once; the tee of its service's
        # shadows (activator.shadow), if it has any
        self.route = Route(remove_prefixes=STRIPPED_PREFIXES, timeouts=self.timeouts, tee=tee)


def _proxy_headers(host: str | None, address: str) -> tuple[tuple[str, str], ...]:
    """What the activator sets on a request it forwards to a pod's queue-proxy."""
    return (("K-Proxy-Request", "activator"), ("K-Original-Host", host or ""), ("Host", address))


_NO_NAMES: tuple[str, ...] = ()


def _peer(address: str) -> dict[str, object]:
    """A pod's address as a client span's ``server.address`` and ``server.port``."""
    host, _, port = address.rpartition(":")
    return {"server.address": host, "server.port": int(port) if port.isdigit() else 0}


class ActivatorHandler:
    """One activator's :data:`dataplane.api.Handler`."""

    def __init__(
        self,
        *,
        router: Router,
        throttler: Throttler,
        reporter: ConcurrencyReporter,
        sink: StatSink,
        metrics: ActivatorMetrics,
        not_ready_reason: NotReadyReason | None = None,
        tees: Callable[[Revision], object] | None = None,
        tracer: Tracer | None = None,
        cold_starts: ColdStartTraces | None = None,
    ) -> None:
        self.router = router
        self.throttler = throttler
        self.reporter = reporter
        self.sink = sink
        self.metrics = metrics
        self.draining = False
        self.last_request_at = 0.0  # loop time of the last non-probe request (drain)
        self._lanes: dict[tuple[str, str], _Lane] = {}
        # Host → lane, for hosts whose every request goes to one revision (the usual case)
        self._host_lanes: dict[str, _Lane] = {}
        self._clock: Callable[[], float] | None = None  # the loop's time(), on the first request
        self.paths = PathCounts()
        # why a revision has no ready pod, if anyone knows (read by the timeout answer only)
        self.not_ready_reason = not_ready_reason
        # a revision's tee factory (activator.shadow.Mirror.tee_for: its service's shadows)
        self.tees = tees
        # tracing (dataplane.tracing): off unless configured; a cold start's steps, where known
        self.tracer = tracer if tracer is not None else Tracer("activator")
        self.cold_starts = cold_starts

    def routes_changed(self) -> None:
        """Forget the lanes: routes moved, and a revision's throttler may have been dropped."""
        self._lanes.clear()
        self._host_lanes.clear()

    def _lane(self, revision: Revision) -> _Lane:
        key = (revision.namespace, revision.name)
        lane = self._lanes.get(key)
        if lane is None or lane.revision is not revision:
            tee = self.tees(revision) if self.tees is not None else None
            lane = self._lanes[key] = _Lane(
                revision, self.throttler.get(revision), self.metrics.revision(revision), tee
            )
        return lane

    # --- the handler -------------------------------------------------------------------------

    def __call__(self, ex: Exchange) -> Awaitable[None] | None:
        return self.handle(ex)

    def handle(self, ex: Exchange) -> Awaitable[None] | None:
        """The handler's body (a method of its own, so that its locals are typed compiled)."""
        host, probe, kubelet = header_marks(ex.find_headers(MARK_HEADERS))
        if kubelet:
            self._health(ex)
            return None
        if probe:
            probes.activator_probe(ex, probe, draining=self.draining)
            return None
        lane = self._host_lanes.get(host) if host is not None else None
        if lane is None:
            lane = self._route(ex, host)
            if lane is None:
                return None  # answered (404, or health)
        clock = self._clock
        if clock is None:
            clock = self._clock = asyncio.get_running_loop().time
        now = clock()
        self.last_request_at = now
        counter = lane.counter
        if not counter.live:
            counter, immediate = self.reporter.counter(lane.key, now, time.time())
            lane.counter = counter
            if immediate is not None:  # the revision's first request: the scale-from-zero signal
                self.sink.put([immediate])
        counter.request_in(now)
        lane.metrics.in_flight += 1
        if self.tracer.on:  # (off: the one thing tracing costs a request)
            context = self.tracer.begin(ex.headers)
            if context is not None:
                return self._wait_and_proxy(ex, lane, host, context)
        admission = lane.throttler.try_admit()
        if admission is None:  # no slot free now: wait for one
            self.paths.waited += 1
            return self._wait_and_proxy(ex, lane, host)
        try:
            address = admission.address
            self.paths.hot += 1
            # (by position: route, set_headers, remove_headers, on_refused)
            ex.forward_now(
                address,
                partial(self._forwarded, ex, lane, admission),
                lane.route,
                _proxy_headers(host, address),
                (),
                partial(self._refused, ex, lane, host, admission),
            )
            return None
        except BaseException:  # a bug (the core answers 500): keep slots and counts right
            admission.release()
            self._finish(ex, lane, 500)
            raise

    def _route(self, ex: Exchange, host: str | None) -> _Lane | None:
        """The lane of a request the host cache did not know; None when answered here."""
        try:
            revision = self.router.revision_for(host, ex.target)
        except RouteNotFoundError as exc:
            if ex.target.split("?", 1)[0] == HEALTH_PATH:
                self._health(ex)
            else:
                self.metrics.unrouted(404)
                ex.respond_now(404, f"{exc}\n".encode())
            return None
        lane = self._lane(revision)
        if host is not None and self.router.table.fixed_revision(host) is revision:
            if len(self._host_lanes) >= _HOST_CACHE_MAX:
                self._host_lanes.clear()
            self._host_lanes[host] = lane
        return lane

    def _forwarded(self, ex: Exchange, lane: _Lane, admission: Admission, r: ForwardResult) -> None:
        """``on_done`` of the hot path: slots back, then the request's end."""
        admission.release()
        self._finish(ex, lane, r.status)

    def _finish(self, ex: Exchange, lane: _Lane, status: int) -> None:
        """The request's end: stats out, metrics (its slots are given back already)."""
        clock = self._clock  # set by __call__ before any request can end
        now = clock() if clock is not None else asyncio.get_running_loop().time()
        lane.counter.request_out(now)
        rm = lane.metrics
        rm.in_flight -= 1
        rm.request_done(status, now - ex.arrived_at)

    # --- the slow path -----------------------------------------------------------------------

    async def _wait_and_proxy(
        self, ex: Exchange, lane: _Lane, host: str | None, context: Context | None = None
    ) -> None:
        """The slow path; with ``context`` (a sampled request, dataplane.tracing) inside its
        ``activator`` span."""
        status = 499  # unless set below: the client left while the request waited
        span = None
        if context is not None:
            revision = {
                "k8s.namespace.name": lane.key.namespace,
                "zeroserve.revision": lane.key.name,
            }
            span = self.tracer.request_span("activator", context, ex, revision)
        try:
            status = await self._throttle_and_proxy(ex, lane, host, span)
        finally:
            if span is not None:
                end_span(span, status)
            self._finish(ex, lane, status)

    async def _retry_and_proxy(
        self,
        ex: Exchange,
        lane: _Lane,
        host: str | None,
        admission: Admission,
        refused: UpstreamConnectError | None = None,
    ) -> None:
        status = 499
        try:
            status = await self._proxy(ex, lane, host, admission, refused)
        finally:
            admission.release()
            self._finish(ex, lane, status)

    def _refused(
        self,
        ex: Exchange,
        lane: _Lane,
        host: str | None,
        admission: Admission,
        exc: UpstreamConnectError,
    ) -> Awaitable[None]:
        """``on_refused`` of the hot path: the pod refused a new connection. Nothing was
        answered: retry on another pod as the slow path does."""
        self.paths.refused += 1
        return self._retry_and_proxy(ex, lane, host, admission, exc)

    async def _throttle_and_proxy(
        self, ex: Exchange, lane: _Lane, host: str | None, parent: Span | None = None
    ) -> int:
        """Wait for a slot (traced: the ``throttler_try`` span; at a cold start it gets a
        ``cold_start`` child with the start's steps once they are known), then proxy."""
        loop = asyncio.get_running_loop()
        throttler = lane.throttler
        rm = lane.metrics
        cold = not throttler.ready
        timeout_s = lane.revision.timeout_s
        left_s = max(timeout_s - (loop.time() - ex.arrived_at), 1e-3) if timeout_s > 0 else 0.0
        wait = None
        if parent is not None:
            wait = self.tracer.span("throttler_try", parent, attributes={"zeroserve.cold": cold})
            if cold and self.cold_starts is not None:
                self.cold_starts.waiting(lane.key.namespace, lane.key.name, wait)
        rm.queued += 1
        queued = True
        try:
            async with throttler.admit(left_s) as admission:
                rm.queued -= 1
                queued = False
                if cold:
                    rm.cold_start_waited(loop.time() - ex.arrived_at)
                if wait is not None:
                    wait.set_attribute("zeroserve.pod", admission.address)
                    wait.end()
                    wait = None
                return await self._proxy(ex, lane, host, admission, parent=parent)
        except QueueFullError as exc:
            ex.respond_now(503, f"{exc}\n".encode())
            return 503
        except WaitTimeoutError:
            # named by the revision's timeout, of which the wait had what was left
            reason = f"{WaitTimeoutError(lane.key, timeout_s)}"
            why = self.not_ready_reason(lane.key) if self.not_ready_reason is not None else None
            if why:
                reason = f"{reason}: {why}"
            ex.respond_now(503, f"{reason}\n".encode())
            return 503
        finally:
            if queued:
                rm.queued -= 1
            if wait is not None:  # (no slot: a refusal or a timeout)
                wait.end()

    async def _proxy(
        self,
        ex: Exchange,
        lane: _Lane,
        host: str | None,
        admission: Admission,
        refused: UpstreamConnectError | None = None,
        parent: Span | None = None,
    ) -> int:
        """Forward on the admitted pod; a refused connection is retried once on another pod.
        ``refused``: the hot path's connection to this pod was refused already. Traced: each
        try is an ``activator_proxy`` span, whose context the pod gets in ``traceparent``."""
        retried = False
        while True:
            address = admission.address
            if refused is None:
                sets, removes = _proxy_headers(host, address), _NO_NAMES
                span = None
                if parent is not None:
                    span = self.tracer.span(
                        "activator_proxy", parent, kind="client", attributes=_peer(address)
                    )
                    sets, removes = sets + self.tracer.headers(span), TRACE_HEADERS
                status = 502
                try:
                    result = await ex.forward(
                        address, route=lane.route, set_headers=sets, remove_headers=removes
                    )
                    status = result.status
                    return status
                except UpstreamConnectError as exc:
                    refused = exc
                finally:
                    if span is not None:
                        end_span(span, status)
            log.warning(
                "pod refused the connection",
                extra={"revision": str(lane.key), "pod": address, "retried": retried},
            )
            if retried or not (admission.retry() or await self._wait_other(ex, lane, admission)):
                body = f"error connecting to revision {lane.key} (pod {address}): {refused}\n"
                ex.respond_now(502, body.encode())
                return 502
            retried = True
            refused = None

    async def _wait_other(self, ex: Exchange, lane: _Lane, admission: Admission) -> bool:
        """No other pod is free now: wait for one (within what is left of the revision
        timeout), as a request waits for a pod; False if there is no other pod, or none frees
        in time. (With containerConcurrency, the other pods are often busy just then.)"""
        timeout_s = lane.revision.timeout_s
        left: float | None = None
        if timeout_s > 0:
            left = max(timeout_s - (asyncio.get_running_loop().time() - ex.arrived_at), 0.0)
        assert admission.tried is not None  # (retry() made it)
        try:
            async with asyncio.timeout(left):
                tracker = await lane.throttler.wait_pick(admission.tried)
        except TimeoutError:
            return False
        admission.tracker = tracker
        return tracker is not None

    def _health(self, ex: Exchange) -> None:
        """Knative's HealthHandler (:func:`dataplane.probes.activator_health`)."""
        probes.activator_health(ex, draining=self.draining, connected=self.sink.connected)

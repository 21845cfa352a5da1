"""The activator's request handler: probes, routing, stats, throttling, proxying (§4.1).

Order, outermost first (as Knative's chain): health and probe answers; routing (404); the
concurrency reporter (a request counts from arrival, queued time included); the throttler
(503 when the queue is full or the revision timeout passes while waiting); the proxy (one retry
on another pod when the connection was refused before any byte went out, else 502).
"""

from __future__ import annotations

import asyncio
import logging
import time

from activator.metrics import ActivatorMetrics
from activator.reporter import ConcurrencyReporter
from activator.routing import RouteNotFoundError, Router
from activator.sinks import StatSink
from activator.throttler import Admission, QueueFullError, Throttler, WaitTimeoutError
from cluster.spec import Revision
from dataplane.api import Exchange, Timeouts, UpstreamConnectError

log = logging.getLogger("activator")

HEALTH_PATH = "/healthz"
# Headers a client must not choose: they would pick a revision or fake a proxied request.
STRIPPED_PREFIXES = ("k-", "knative-serving-")


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
    ) -> None:
        self.router = router
        self.throttler = throttler
        self.reporter = reporter
        self.sink = sink
        self.metrics = metrics
        self.draining = False
        self.last_request_at = 0.0  # loop time of the last non-probe request (drain)
        self._timeouts: dict[tuple[str, str], Timeouts] = {}

    async def __call__(self, ex: Exchange) -> None:
        loop = asyncio.get_running_loop()
        if self._is_kubelet_probe(ex):
            await self._health(ex)
            return
        probe = ex.header("K-Network-Probe")
        if probe:
            if probe == "activator":
                await ex.respond(200, b"activator")
            else:
                await ex.respond(400, b"unexpected probe header value: " + probe.encode() + b"\n")
            return
        try:
            route = self.router.resolve(ex.header("Host"), ex.target)
        except RouteNotFoundError as exc:
            if ex.target.split("?", 1)[0] == HEALTH_PATH:
                await self._health(ex)
                return
            self.metrics.unrouted(404)
            await ex.respond(404, f"{exc}\n".encode())
            return
        self.last_request_at = loop.time()
        revision = route.revision
        key = revision.key
        immediate = self.reporter.request_in(key, loop.time(), time.time())
        if immediate is not None:  # the revision's first request: the scale-from-zero signal
            self.sink.put([immediate])
        rm = self.metrics.revision(revision)
        rm.in_flight.inc()
        status = 500
        try:
            status = await self._throttle_and_proxy(ex, revision)
        finally:
            self.reporter.request_out(key, loop.time())
            rm.in_flight.dec()
            rm.request_done(status, loop.time() - ex.arrived_at)

    async def _throttle_and_proxy(self, ex: Exchange, revision: Revision) -> int:
        loop = asyncio.get_running_loop()
        throttler = self.throttler.get(revision)
        rm = self.metrics.revision(revision)
        cold = not throttler.ready
        timeout_s = revision.timeout_s
        left_s = max(timeout_s - (loop.time() - ex.arrived_at), 1e-3) if timeout_s > 0 else 0.0
        rm.queued.inc()
        queued = True
        try:
            async with throttler.admit(left_s) as admission:
                rm.queued.dec()
                queued = False
                if cold:
                    rm.cold_start_wait.observe(loop.time() - ex.arrived_at)
                return await self._proxy(ex, revision, admission)
        except QueueFullError as exc:
            await ex.respond(503, f"{exc}\n".encode())
            return 503
        except WaitTimeoutError:
            # named by the revision's timeout, of which the wait had what was left
            reason = WaitTimeoutError(revision.key, timeout_s)
            await ex.respond(503, f"{reason}\n".encode())
            return 503
        finally:
            if queued:
                rm.queued.dec()

    async def _proxy(self, ex: Exchange, revision: Revision, admission: Admission) -> int:
        host = ex.header("Host") or ""
        retried = False
        while True:
            address = admission.address
            try:
                result = await ex.forward(
                    address,
                    set_headers=(
                        ("K-Proxy-Request", "activator"),
                        ("K-Original-Host", host),
                        ("Host", address),
                    ),
                    remove_prefixes=STRIPPED_PREFIXES,
                    timeouts=self._timeouts_of(revision),
                )
                return result.status
            except UpstreamConnectError as exc:
                log.warning(
                    "pod refused the connection",
                    extra={"revision": str(revision.key), "pod": address, "retried": retried},
                )
                if retried or not admission.retry():
                    body = f"error connecting to revision {revision.key} (pod {address}): {exc}\n"
                    await ex.respond(502, body.encode())
                    return 502
                retried = True

    def _timeouts_of(self, revision: Revision) -> Timeouts:
        key = (revision.namespace, revision.name)
        t = self._timeouts.get(key)
        if t is None:
            t = self._timeouts[key] = Timeouts(
                total_s=revision.timeout_s,
                response_start_s=revision.response_start_timeout_s,
                idle_s=revision.idle_timeout_s,
                body_prefix="activator ",
            )
        return t

    @staticmethod
    def _is_kubelet_probe(ex: Exchange) -> bool:
        ua = ex.header("User-Agent")
        return (ua is not None and ua.startswith("kube-probe/")) or bool(
            ex.header("K-Kubelet-Probe")
        )

    async def _health(self, ex: Exchange) -> None:
        if self.draining:
            await ex.respond(503, b"draining\n")
        else:
            await ex.respond(200, b"ok\n")

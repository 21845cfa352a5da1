"""The queue-proxy's request handler chain on the forwarding core (reference §3.2), one class:
:class:`QueueHandler`.

Outermost first: probes (never counted; answered by :mod:`dataplane.probes`: ``K-Network-Probe:
queue`` and health checks get the health answer, ``K-Network-Probe: probe`` gets its
``K-Network-Hash`` echoed) → drain bookkeeping → stats in/out and metrics → with batching on, an inference request
joins a batch (:mod:`queue_proxy.batching`: each batch holds one breaker slot) → breaker
(with the total timeout while waiting) → forward to the model server (timeouts, header
rewrites).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from dataplane import probes
from dataplane.api import (
    CLIENT_DISCONNECTED,
    NOT_SENT,
    TIMEOUT_IDLE,
    TIMEOUT_RESPONSE_START,
    TIMEOUT_TOTAL,
    UPSTREAM_CONNECT,
    UPSTREAM_ERROR,
    ForwardResult,
    TeeFactory,
    Timeouts,
    UpstreamConnectError,
)
from dataplane.breaker import Breaker, QueueFullError
from dataplane.exchange import DirectHandler, ForwardDone, HttpExchange
from dataplane.messages import HeaderNames
from dataplane.route import Route
from dataplane.tracing import TRACE_HEADERS, Tracer, end_span
from metrics.clock import LoopClock
from metrics.request_stats import RequestStats
from queue_proxy.batching import (
    MAX_BODY,
    Answer,
    Batcher,
    batch_path,
    read_member,
)
from queue_proxy.drain import Drainer
from queue_proxy.metrics import QueueMetrics
from queue_proxy.probe import Readiness
from queue_proxy.stats import StatReporter

if TYPE_CHECKING:  # (OpenTelemetry's types: imported only when tracing is on)
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

_KNATIVE_PREFIXES = ("knative-serving-",)
# User agents of health checks (Knative's drainer): the kubelet, the activator, the autoscaler.
_HEALTH_AGENTS = probes.DRAINER_AGENTS
# the refusal metric's reason for each way a forward can fail (api.FORWARD_REASONS)
_REFUSAL_BY_REASON: dict[str, str] = {
    TIMEOUT_TOTAL: "timeout",
    TIMEOUT_RESPONSE_START: "timeout",
    TIMEOUT_IDLE: "timeout",
    UPSTREAM_CONNECT: "upstream_connect",
    UPSTREAM_ERROR: "upstream_error",
    CLIENT_DISCONNECTED: "client_disconnected",
}


_ORIGINAL_HOST = ("k-original-host",)


def _host_edits(host: str | None) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """``K-Original-Host`` (from the activator) becomes the Host: (set, removed) headers."""
    if host is None:
        return (), ()
    return (("Host", host),), _ORIGINAL_HOST


MARK_HEADERS = HeaderNames(
    "K-Proxy-Request", "K-Original-Host", "K-Network-Probe", "K-Kubelet-Probe", "User-Agent"
)
"""The headers the queue-proxy reads in every request, found in one pass
(``Exchange.find_headers``: the first of each, as Go's ``Header.Get``)."""


def request_marks(found: list[str | None]) -> tuple[bool, str | None, str | None, bool]:
    """What the queue-proxy reads in a request, from the values of :data:`MARK_HEADERS`:
    (proxied by the activator, ``K-Original-Host``, ``K-Network-Probe``, a health check: a
    non-empty ``K-Kubelet-Probe`` or a health-check user agent)."""
    kubelet_probe = found[3]
    agent = found[4]
    # (every health-check agent starts with a K: most agents are ruled out by their first letter)
    kubelet = bool(kubelet_probe) or (
        agent is not None and agent[:1] in ("k", "K") and agent.startswith(_HEALTH_AGENTS)
    )
    return found[0] == "activator", found[1], found[2], kubelet


class _Accounting:
    """The end of a request's accounting, shared by a handler's requests: its refusal counted,
    its stats out, its status and latency observed."""

    __slots__ = ("loop_time", "metrics", "requests")

    def __init__(
        self, requests: RequestStats, metrics: QueueMetrics, loop_time: Callable[[], float]
    ) -> None:
        self.requests = requests
        self.metrics = metrics
        self.loop_time = loop_time

    def count_failure(self, result: ForwardResult) -> None:
        if not result.completed:
            self.metrics.refusal[_REFUSAL_BY_REASON[result.reason]].inc()

    def finish(self, ex: HttpExchange, proxied: bool, status: int) -> None:
        end = self.loop_time()
        self.requests.request_out(end, proxied)
        self.metrics.observe(status, end - ex.arrived_at)


class _Done(ForwardDone):
    """The end of a request handed to ``Exchange.forward_now``: its breaker slot back, then its
    accounting. A small object made per request (a closure would be, with its cell and its
    annotations) that the core calls without a Python-level call when compiled."""

    __slots__ = ("acc", "ex", "proxied", "release")  # set by _new_done

    acc: _Accounting
    ex: HttpExchange
    proxied: bool
    release: Callable[[], None] | None

    def forward_done(self, result: ForwardResult) -> None:
        if self.release is not None:
            self.release()
        # (by name: a named tuple's items by index go through its type's __getitem__ when
        # compiled, which costs more than the lookups)
        if not result.completed:
            self.acc.count_failure(result)
        self.acc.finish(self.ex, self.proxied, result.status)


def _new_done(
    acc: _Accounting, ex: HttpExchange, proxied: bool, release: Callable[[], None] | None
) -> _Done:
    """``_Done`` with these fields, made without a Python-level call when compiled."""
    done = _Done.__new__(_Done)
    done.acc = acc
    done.ex = ex
    done.proxied = proxied
    done.release = release
    return done


class QueueHandler(DirectHandler):
    """The queue-proxy's :data:`dataplane.api.Handler`.

    The hot path (:meth:`handle`): a request counted in, a breaker slot free now, forwarded
    with :meth:`Exchange.forward_now` and ended by a :class:`_Done`, without a task. The wait
    for a breaker slot is a coroutine, the slow path. An object the core calls without a
    Python-level call when compiled. Made in a running event loop (its accounting reads the
    loop's time)."""

    __slots__ = (
        "acc",
        "arrival_clock",
        "batcher",
        "breaker",
        "clock",
        "drainer",
        "forward_attributes",
        "readiness",
        "refusal",
        "requests",
        "route",
        "timeouts",
        "tracer",
        "upstream",
    )

    def __init__(
        self,
        *,
        user_port: int,
        timeouts: Timeouts,
        breaker: Breaker | None,
        stats: StatReporter,
        metrics: QueueMetrics,
        readiness: Readiness,
        drainer: Drainer,
        batcher: Batcher | None = None,
        tee: TeeFactory | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.upstream = f"127.0.0.1:{user_port}"
        self.tracer = tracer if tracer is not None else Tracer("queue-proxy")
        self.forward_attributes = {"server.address": "127.0.0.1", "server.port": user_port}
        self.batcher = batcher  # (None: no batching; the hot path tests only this)
        self.timeouts = timeouts
        # the header edits and timeouts of every forward, made once
        # (tee: payload logging's queue_proxy.payload_log.PayloadLogger, or None)
        self.route = Route(remove_prefixes=_KNATIVE_PREFIXES, timeouts=timeouts, tee=tee)
        self.breaker = breaker
        self.requests = stats.requests
        self.refusal = metrics.refusal
        clock = stats.clock
        self.clock = clock
        # a request's arrival time is its in-time (the stats' clock is the loop's)
        self.arrival_clock = isinstance(clock, LoopClock)
        loop_time = asyncio.get_running_loop().time if self.arrival_clock else clock.monotonic
        self.acc = _Accounting(self.requests, metrics, loop_time)
        self.readiness = readiness
        self.drainer = drainer

    def handle(self, ex: HttpExchange) -> Awaitable[None] | None:
        proxied, host, probe, kubelet = request_marks(ex.find_headers(MARK_HEADERS))
        if probe == "probe":  # probes.PROBE_KINGRESS (a literal: compared without a lookup)
            self._kingress_probe(ex)
            return None
        if probe is not None or kubelet:
            return self._health(ex, probe)
        drainer = self.drainer
        if drainer.draining:
            drainer.touch()  # every request restarts the quiet period
        # Recorded before the breaker: queued requests count as concurrency (§2.1).
        self.requests.request_in(
            ex.arrived_at if self.arrival_clock else self.clock.monotonic(), proxied
        )
        if self.tracer.on:  # (off: the one thing tracing costs a request)
            context = self.tracer.begin(ex.headers)
            if context is not None:
                return self._waited(ex, proxied, self._traced(ex, host, context))
        if self.batcher is not None and batch_path(ex.method, ex.target):
            return self._waited(ex, proxied, self._batch_or_forward(ex, host))
        release: Callable[[], None] | None = None
        breaker = self.breaker
        if breaker is not None:
            release = breaker.reserve()  # a slot free now, or None: wait in the slow path
            if release is None:
                return self._waited(ex, proxied, self._wait_then_forward(ex, host))
        done = _new_done(self.acc, ex, proxied, release)
        sets, removes = _host_edits(host)
        # (by position: route, set_headers, remove_headers)
        ex.forward_now(self.upstream, done, self.route, sets, removes)
        return None

    # --- the slow path -----------------------------------------------------------------------

    async def _waited(self, ex: HttpExchange, proxied: bool, flow: Awaitable[int]) -> None:
        """The slow path's end: ``flow`` (a coroutine that answers the request: the wait in
        the breaker, a batch, a traced request) gives the status; the request was counted in."""
        status = 499
        try:
            status = await flow
        except asyncio.CancelledError:  # the client left while the request waited
            self.refusal["client_disconnected"].inc()
            raise
        finally:
            self.acc.finish(ex, proxied, status)

    async def _traced(self, ex: HttpExchange, host: str | None, context: Context) -> int:
        """A sampled request (dataplane.tracing): its ``queue_proxy`` span around the path it
        takes, with ``queue_wait`` and ``queue_forward`` inside."""
        span = self.tracer.request_span("queue_proxy", context, ex)
        status = 499
        try:
            if self.batcher is not None and batch_path(ex.method, ex.target):
                status = await self._batch_or_forward(ex, host, span)
            elif self.breaker is None:
                status = await self._forward(ex, host, span)
            else:
                status = await self._wait_then_forward(ex, host, span)
            return status
        finally:
            end_span(span, status)

    async def _batch_or_forward(
        self, ex: HttpExchange, host: str | None, parent: Span | None = None
    ) -> int:
        """Into a batch when its body is a batchable request; else as any other request."""
        batcher = self.batcher
        assert batcher is not None
        body = await ex.read_body(MAX_BODY)
        member = read_member(ex.target, body) if body is not None else None
        if member is None:  # (what was read is held: forwarded as it came)
            if self.breaker is None:
                return await self._forward(ex, host, parent)
            return await self._wait_then_forward(ex, host, parent)
        timeouts = self.timeouts
        member.host = host or ex.header("Host") or ""
        member.arrived = ex.arrived_at
        member.deadline = ex.arrived_at + timeouts.total_s if timeouts.total_s > 0 else None
        try:
            answer = await batcher.submit(member)
        except (QueueFullError, TimeoutError) as exc:
            return self._refused(ex, exc)
        headers: tuple[tuple[str, str], ...] = (("Content-Type", answer.content_type),)
        if answer.refusal:
            self.refusal[answer.refusal].inc()
            if answer.refusal == "upstream_connect":  # nothing went out: another pod may take it
                headers += NOT_SENT
        await ex.respond(answer.status, answer.body, headers)
        tee = self.route.tee
        if tee is not None:  # payload logging sees a batched request as a forwarded one
            _tee_answered(cast(TeeFactory, tee), ex, body or b"", answer)
        return answer.status

    async def _wait_then_forward(
        self, ex: HttpExchange, host: str | None, parent: Span | None = None
    ) -> int:
        """The breaker is busy: wait in its queue (bounded by the total timeout); traced, the
        wait is the ``queue_wait`` span."""
        breaker = self.breaker
        assert breaker is not None
        timeouts = self.timeouts
        deadline = ex.arrived_at + timeouts.total_s if timeouts.total_s > 0 else None
        wait = None if parent is None else self.tracer.span("queue_wait", parent)
        try:
            async with asyncio.timeout_at(deadline) as waiting:
                async with breaker.maybe():
                    if wait is not None:
                        wait.end()
                        wait = None
                    waiting.reschedule(None)  # the total timeout is forward's from here
                    return await self._forward(ex, host, parent)
        except (QueueFullError, TimeoutError) as exc:
            return self._refused(ex, exc)
        finally:
            if wait is not None:  # (the request never got a slot)
                wait.end()

    def _refused(self, ex: HttpExchange, exc: QueueFullError | TimeoutError) -> int:
        """A request that waited in vain (the breaker's or the batcher's queue): 503 when the
        queue was full, 504 when its total timeout passed; counted. Its status."""
        if isinstance(exc, QueueFullError):
            self.refusal["queue_full"].inc()
            ex.respond_now(503, f"{exc}\n".encode())
            return 503
        self.refusal["timeout"].inc()
        ex.respond_now(504, f"{self.timeouts.body_prefix}request timeout".encode())
        return 504

    async def _forward(self, ex: HttpExchange, host: str | None, parent: Span | None = None) -> int:
        """To the model server; ``K-Original-Host`` (from the activator) becomes the Host.
        Traced: the ``queue_forward`` span, whose context the model server gets in
        ``traceparent``."""
        sets, removes = _host_edits(host)
        span = None
        if parent is not None:
            span = self.tracer.span(
                "queue_forward", parent, kind="client", attributes=self.forward_attributes
            )
            sets += self.tracer.headers(span)
            removes += TRACE_HEADERS
        status = 502
        try:
            result = await ex.forward(
                self.upstream, route=self.route, set_headers=sets, remove_headers=removes
            )
            status = result.status
        except UpstreamConnectError as exc:
            self.refusal["upstream_connect"].inc()
            await ex.respond(502, f"upstream connect error: {exc}\n".encode(), NOT_SENT)
            return 502
        finally:
            if span is not None:
                end_span(span, status)
        self.acc.count_failure(result)
        return status

    # --- probes (dataplane.probes) -----------------------------------------------------------

    def _health(self, ex: HttpExchange, probe: str | None) -> Awaitable[None] | None:
        """Knative's health handler (§3.4): a health check, or a ``K-Network-Probe`` other
        than ``probe``. While the model server is ready, each one probes it afresh
        (:meth:`Readiness.check`), as Knative's does: a restarted model server is not reported
        ready before it listens again."""
        draining = self.drainer.draining
        if self.readiness.ready and not draining and probe in (None, probes.PROBE_QUEUE):
            return self._checked_health(ex, probe)
        probes.queue_health(ex, probe, draining=draining, ready=self.readiness.ready)
        return None

    async def _checked_health(self, ex: HttpExchange, probe: str | None) -> None:
        ready = await self.readiness.check()
        probes.queue_health(ex, probe, draining=self.drainer.draining, ready=ready)

    def _kingress_probe(self, ex: HttpExchange) -> None:
        """The KIngress prober's ``K-Network-Probe: probe``: echo ``K-Network-Hash``."""
        probes.kingress_probe(
            ex, draining=self.drainer.draining, draining_body=probes.QUEUE_DRAINING
        )


def _tee_answered(factory: TeeFactory, ex: HttpExchange, body: bytes, answer: Answer) -> None:
    """A batched request's bytes to the route's tee (payload logging), as the core gives a
    forwarded one's: its body, then its own answer (the batch's share that was its)."""
    tee = factory.start(ex)
    if tee is None:
        return
    tee.request_body(body)
    tee.request_end()
    tee.response_head(answer.status, f"Content-Type: {answer.content_type}\r\n".encode())
    tee.response_body(answer.body)
    tee.end(ForwardResult(answer.status, True))


def build_breaker(container_concurrency: int) -> Breaker | None:
    """Knative's ``buildBreaker``: none when CC < 1, else CC active + 10×CC waiting."""
    if container_concurrency < 1:
        return None
    return Breaker(
        queue_depth=10 * container_concurrency,
        max_concurrency=container_concurrency,
        initial_capacity=container_concurrency,
    )

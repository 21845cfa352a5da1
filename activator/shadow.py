"""Shadow revisions: a copy of a share of a service's requests sent to another revision as well,
fire and forget, its response compared with the primary's and discarded (docs/shadow.md).

How a copy is taken: the lanes of a service's primary revisions forward with a route whose tee
(:class:`dataplane.api.TeeFactory`) is a :class:`_ServiceTees`. For each request it draws
whether each shadow gets a copy (its percent); a request picked holds a copy slot (at most
``max_in_flight`` per shadow revision: beyond, the copy is dropped and counted) and a
:class:`_Tee`, to which the core hands the request body as it goes to the primary (buffered once,
up to ``max_body_bytes``: a larger one is not mirrored, counted) and the primary's response. When
the body is whole, the copy is sent at once, in a task: the primary's request has gone on its way
already, and nothing of the copy's (slow, failing, scaled to zero, missing) reaches it.

How a copy is sent: as a request of the shadow revision like any other, so that the revision
scales on its copies, from zero too. It is counted by the concurrency reporter (the revision's
first request sends the immediate stat that wakes the autoscaler), waits for a pod in the
revision's throttler (the same breaker and pod trackers as its own requests, bounded by the
revision timeout), and goes to the pod's queue-proxy on a keep-alive pool of its own
(:func:`dataplane.client.fetch`) with ``K-Proxy-Request: activator`` (the queue-proxy does not
count it twice) and the client's Host with Istio's ``-shadow`` suffix as ``K-Original-Host``.
Its response is read whole (up to ``max_response_bytes``), compared
(:func:`activator.shadow_compare.compare`) when both sides have ended, and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from activator.metrics import ActivatorMetrics
from activator.reporter import ConcurrencyReporter
from activator.shadow_compare import Outcome, ShadowMetrics, compare, content_type
from activator.sinks import StatSink
from activator.throttler import Admission, QueueFullError, Throttler, WaitTimeoutError
from cluster.spec import Revision, RevisionKey, Service
from dataplane.api import Exchange, ForwardResult, Tee, UpstreamConnectError
from dataplane.client import UpstreamFailedError, fetch
from dataplane.messages import HOP_BY_HOP
from dataplane.upstream import UpstreamPool

log = logging.getLogger("zeroserve.activator.shadow")

SHADOW_SUFFIX = "-shadow"
# not copied from the client's request: hop by hop, framing (fetch sets its own), what the
# activator sets (Host, the K- marks: the same rule as the primary's), Expect (the body is sent
# with the head)
_DROPPED = HOP_BY_HOP | {"host", "content-length", "expect"}
_DROPPED_PREFIXES = ("k-", "knative-serving-")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowSettings:
    """Bounds of the copies one activator holds."""

    max_in_flight: int = 100
    """Copies held at once per shadow revision (buffering, sent, or waiting for the primary's
    end); one more is dropped and counted."""
    max_body_bytes: int = 1024 * 1024
    """The largest request body copied, and the most of each response kept for the comparison
    (a longer response is compared by status only)."""
    max_response_bytes: int = 16 * 1024 * 1024
    """The largest shadow response read; a longer one fails the copy."""


def shadow_host(host: str) -> str:
    """Istio's mirror Host: ``-shadow`` appended to the host, before a port if there is one
    (``iris.default.example.com:8080`` → ``iris.default.example.com-shadow:8080``)."""
    if host.startswith("["):  # an IPv6 literal, [::1] or [::1]:8080
        end = host.find("]") + 1
        return host[:end] + SHADOW_SUFFIX + host[end:]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return f"{name}{SHADOW_SUFFIX}:{port}"
    return host + SHADOW_SUFFIX


def copy_headers(headers: Any, host: str) -> list[tuple[str, str]]:
    """The headers a copy carries: the client's end-to-end ones, then the activator's marks."""
    out = [
        (name, value)
        for name, value in headers
        if name.lower() not in _DROPPED and not name.lower().startswith(_DROPPED_PREFIXES)
    ]
    out += [("K-Proxy-Request", "activator"), ("K-Original-Host", shadow_host(host))]
    return out


class _Copy:
    """One copy of one request to one shadow revision: the two sides' outcomes."""

    __slots__ = ("closed", "labels", "primary", "revision", "shadow", "target")

    def __init__(self, target: _Target) -> None:
        self.closed = False  # compared (or given up), its slot back
        self.target = target
        self.revision = target.revision
        self.labels = target.labels
        self.primary: Outcome | None = None
        self.shadow: Outcome | None = None  # set when the copy got a response


class _Target:
    """A shadow revision of one service, and its copies in flight (shared by the services'
    factories: the bound is per shadow revision)."""

    __slots__ = ("in_flight", "labels", "percent", "revision")

    def __init__(self, revision: Revision, percent: int) -> None:
        self.revision = revision
        self.percent = percent
        self.labels = (revision.namespace, revision.service, revision.name)
        self.in_flight = 0


class _Tee:
    """A :class:`dataplane.api.Tee` for a request with copies: buffers the request body (up to
    the limit) and the primary's response, sends the copies when the body is whole."""

    __slots__ = (
        "_body",
        "_copies",
        "_ctype",
        "_mirror",
        "_over",
        "_response",
        "_response_over",
        "_started",
        "headers",
        "method",
        "request_done",
        "target",
    )

    def __init__(self, mirror: Mirror, ex: Exchange, copies: list[_Copy], now: float) -> None:
        self._mirror = mirror
        self._copies = copies
        self.method = ex.method
        self.target = ex.target
        headers = ex.headers
        host = next((v for k, v in headers if k.lower() == "host"), "")
        self.headers = copy_headers(headers, host)
        self.request_done = False
        self._body = bytearray()
        self._over = False
        self._response = bytearray()
        self._response_over = False
        self._ctype = ""
        self._started = now

    def request_body(self, chunk: bytes) -> None:
        if self._over:
            return
        if len(self._body) + len(chunk) > self._mirror.settings.max_body_bytes:
            self._over = True
            self._body = bytearray()
            return
        self._body += chunk

    def request_end(self) -> None:
        self.request_done = True
        m = self._mirror
        if self._over:
            for c in self._copies:
                m.finish(c, "body_too_large")
            self._copies = []
            return
        body = bytes(self._body)
        self._body = bytearray()
        for c in self._copies:
            m.spawn(m.send(c, self.method, self.target, self.headers, body))

    def response_head(self, status: int, lines: bytes) -> None:
        self._ctype = content_type(lines)

    def response_body(self, chunk: bytes) -> None:
        if self._response_over:
            return
        if len(self._response) + len(chunk) > self._mirror.settings.max_body_bytes:
            self._response_over = True
            self._response = bytearray()
            return
        self._response += chunk

    def end(self, result: ForwardResult) -> None:
        m = self._mirror
        copies, self._copies = self._copies, []
        if not self.request_done:  # the request ended before its body was whole
            for c in copies:
                m.finish(c, "not_sent")
            return
        primary = Outcome(
            result.status,
            m.clock() - self._started,
            None if self._response_over else bytes(self._response),
            self._ctype,
        )
        self._response = bytearray()
        for c in copies:
            c.primary = primary
            m.side_done(c)


class _ServiceTees:
    """The :class:`dataplane.api.TeeFactory` of a service's primary revisions."""

    __slots__ = ("_mirror", "_missing", "_targets")

    def __init__(self, mirror: Mirror, targets: list[_Target], missing: list[tuple[str, ...]]):
        self._mirror = mirror
        self._targets = targets
        self._missing = missing  # labels of shadow entries whose revision does not exist

    def start(self, ex: Exchange) -> Tee | None:
        m = self._mirror
        rng = m.rng
        copies: list[_Copy] | None = None
        for target in self._targets:
            if target.percent < 100 and rng.random() * 100 >= target.percent:
                continue
            if target.in_flight >= m.settings.max_in_flight:
                m.metrics.outcome(target.labels, "dropped")
                continue
            target.in_flight += 1
            m.metrics.copies_held(target.labels, 1)
            if copies is None:
                copies = []
            copies.append(_Copy(target))
        for labels in self._missing:
            m.metrics.outcome(labels, "missing")
        if copies is None:
            return None
        return _Tee(m, ex, copies, m.clock())


class Mirror:
    """The activator's shadow copies: which lanes tee (:meth:`tee_for`), sending, comparing."""

    def __init__(
        self,
        *,
        throttler: Throttler,
        reporter: ConcurrencyReporter,
        sink: StatSink,
        metrics: ActivatorMetrics,
        settings: ShadowSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.throttler = throttler
        self.reporter = reporter
        self.sink = sink
        self.request_metrics = metrics
        self.metrics = ShadowMetrics(metrics.registry)
        self.settings = settings or ShadowSettings()
        self.rng = rng or random.Random()
        self.pool = UpstreamPool()
        self._factories: dict[RevisionKey, _ServiceTees] = {}
        self._targets: dict[RevisionKey, _Target] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def clock(self) -> float:
        return asyncio.get_running_loop().time()

    # --- routes ------------------------------------------------------------------------------

    def set_services(self, services: Mapping[tuple[str, str], Service]) -> None:
        """The routes changed: each service with shadows tees its primary revisions."""
        factories: dict[RevisionKey, _ServiceTees] = {}
        targets: dict[RevisionKey, _Target] = {}
        for svc in services.values():
            if not svc.shadows:
                continue
            mine: list[_Target] = []
            missing: list[tuple[str, ...]] = []
            for shadow in svc.shadows:
                rev = svc.revision(shadow.revision)
                if rev is None:
                    missing.append((svc.namespace, svc.name, shadow.revision))
                    continue
                # one target per shadow revision for good: the copies in flight count on it
                target = self._targets.get(rev.key) or targets.get(rev.key)
                if target is None:
                    target = _Target(rev, shadow.percent)
                target.revision = rev
                target.percent = shadow.percent
                targets[rev.key] = target
                mine.append(target)
            factory = _ServiceTees(self, mine, missing)
            shadowed = {s.revision for s in svc.shadows}
            for rev in svc.revisions:
                if rev.name not in shadowed:
                    factories[rev.key] = factory
        self._factories = factories
        # (a target no longer routed is kept while copies of it are in flight)
        self._targets = {
            **{k: t for k, t in self._targets.items() if t.in_flight > 0},
            **targets,
        }

    def tee_for(self, revision: Revision) -> _ServiceTees | None:
        """The tee factory of a revision's lane: its service's shadows, if it is a primary."""
        return self._factories.get(revision.key)

    # --- sending -----------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(
        self, copy: _Copy, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Send one copy as a request of the shadow revision (see the module doc)."""
        rev = copy.revision
        key = rev.key
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        immediate = self.reporter.request_in(key, arrived, time.time())
        if immediate is not None:  # its first request: the scale-from-zero signal
            self.sink.put([immediate])
        rm = self.request_metrics.revision(rev)
        rm.in_flight += 1
        status = 502
        try:
            timeout_s = rev.timeout_s
            async with asyncio.timeout(timeout_s if timeout_s > 0 else None):
                throttler = self.throttler.get(rev)
                admission = throttler.try_admit()  # a pod free now: no waiting machinery
                if admission is not None:
                    try:
                        status = await self._fetch(copy, admission, method, target, headers, body)
                    finally:
                        admission.release()
                else:  # wait for a pod (scaling from zero) or a slot, as any request
                    async with throttler.admit(timeout_s) as admission:
                        status = await self._fetch(copy, admission, method, target, headers, body)
        except (QueueFullError, WaitTimeoutError):
            status = 503
        except TimeoutError:
            status = 504
        except (UpstreamConnectError, UpstreamFailedError):
            status = 502
        except Exception:
            log.exception("shadow copy failed", extra={"revision": str(key)})
        finally:
            now = loop.time()
            self.reporter.request_out(key, now)
            rm.in_flight -= 1
            rm.request_done(status, now - arrived)
            self.side_done(copy, shadow=True)

    async def _fetch(
        self,
        copy: _Copy,
        admission: Admission,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> int:
        """The copy to the admitted pod (once more on another if it refuses); its outcome on
        the copy; its status."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        for attempt in range(2):
            address = admission.address
            try:
                response = await fetch(
                    self.pool,
                    address,
                    method,
                    target,
                    headers,
                    body,
                    max_body=self.settings.max_response_bytes,
                )
                break
            except UpstreamConnectError:
                if attempt or not admission.retry():
                    raise
        kept: bytes | None = response.body
        if len(response.body) > self.settings.max_body_bytes:
            kept = None
        ctype = response.header("Content-Type") or ""
        copy.shadow = Outcome(response.status, loop.time() - sent, kept, ctype)
        return response.status

    # --- ending ------------------------------------------------------------------------------

    def side_done(self, copy: _Copy, shadow: bool = False) -> None:
        """One side of a copy ended (``shadow``: the copy's; a copy without a response has
        failed); once both have, compare, soon (not inside the primary's end)."""
        if shadow and copy.shadow is None:
            copy.shadow = _FAILED
        if copy.primary is None or copy.shadow is None or copy.closed:
            return
        copy.closed = True
        asyncio.get_running_loop().call_soon(self._compare, copy)

    def _compare(self, copy: _Copy) -> None:
        primary, shadow = copy.primary, copy.shadow
        assert primary is not None
        if shadow is _FAILED or shadow is None:
            self.finish(copy, "shadow_failed")
            return
        self.metrics.compared(copy.labels, primary, shadow, compare(primary, shadow))
        self.finish(copy, None)

    def finish(self, copy: _Copy, outcome: str | None) -> None:
        """The copy is done: its slot back, its outcome counted (None: counted already)."""
        if outcome is not None:
            self.metrics.outcome(copy.labels, outcome)
        copy.target.in_flight -= 1
        self.metrics.copies_held(copy.labels, -1)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pool.close()


_FAILED = Outcome(0, 0.0, None)
"""A copy's shadow side that got no response."""

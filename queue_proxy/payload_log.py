"""Payload logging: each request and its response sent to a sink as CloudEvents, never waited for
(docs/payload-logging.md).

What is sent: CloudEvents 1.0 in binary HTTP mode, as KServe's logger sends them (so its
consumers read them unchanged): a ``POST`` of the payload itself with ``Ce-Specversion: 1.0``,
``Ce-Type: org.kubeflow.serving.inference.request`` (or ``.response``), one ``Ce-Id`` for a
request and its response (the request's own ``Ce-Id`` if it has one, else a new UUID),
``Ce-Source`` (the pod), ``Ce-Time``, the payload's ``Content-Type``, and the extensions
``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component: predictor``, ``Ce-Endpoint`` (the
revision). Unlike KServe, error responses are logged too (``Ce-Statuscode`` says which), and a
payload cut at the size cap says so (``Ce-Truncated: true``).

How: the queue-proxy's route has a :class:`PayloadLogger` as its tee
(:class:`dataplane.api.TeeFactory`), so the core hands over the request body as it goes to the
model server and the response as it goes to the client: nothing is held back, a streamed
response streams as before and is logged when it ends. Each event goes into a bounded queue
(events and bytes); when it is full the event is dropped and counted, with a log line at most
every 10 s. Workers deliver the queue on a keep-alive pool of their own
(:func:`dataplane.client.fetch`), retrying with exponential back-off and counting what they give
up on. The request path does a few list appends per event and never awaits the sink.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.payload_logging import PayloadLogging
from dataplane.api import Exchange, ForwardResult, Tee, UpstreamConnectError
from dataplane.client import UpstreamFailedError, fetch
from dataplane.messages import HeaderNames
from dataplane.upstream import UpstreamPool

log = logging.getLogger("zeroserve.queue.payload")

REQUEST_TYPE: Final = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE: Final = "org.kubeflow.serving.inference.response"
COMPONENT: Final = "predictor"
OUTCOMES: Final = ("delivered", "dropped", "gave_up", "rejected")
"""What became of an event: accepted by the sink (2xx); dropped, the queue full; given up after
the retries (no answer, or 5xx/408/429 each time); rejected by the sink (another 4xx: not
retried)."""
_HEADERS = HeaderNames("Ce-Id", "Content-Type")
_DROP_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadQueueSettings:
    """Bounds and delivery of one queue-proxy's payload events."""

    max_events: int = 10_000
    """Events queued at most; one more is dropped (counted)."""
    max_bytes: int = 32 * 1024 * 1024
    """Payload bytes queued at most (events held by a worker retrying not included)."""
    max_body_bytes: int = 1024 * 1024
    """The most of one payload logged; beyond it is cut (``Ce-Truncated: true``)."""
    workers: int = 4
    """Events delivered at once."""
    retries: int = 3
    """Attempts after the first before an event is given up."""
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    attempt_timeout_s: float = 5.0
    """One delivery attempt's limit (a sink that answers in 10 s is retried, then given up)."""


# One queued event: (ce-type, ce-id, content type, payload, truncated, status, unix time). A
# tuple of atoms, which the collector stops tracking: a full queue (10,000 events) adds nothing
# to a collection's pause. Its headers are made when it is sent, not on the request path.
_Event = tuple[str, str, str, bytes, bool, int, float]


def _event_headers(event: _Event, common: list[tuple[str, str]]) -> list[tuple[str, str]]:
    ce_type, ce_id, content_type, _, truncated, status, t = event
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
    out = [*common, ("Ce-Type", ce_type), ("Ce-Id", ce_id), ("Ce-Time", stamp)]
    if content_type:
        out.append(("Content-Type", content_type))
    if status:
        out.append(("Ce-Statuscode", str(status)))
    if truncated:
        out.append(("Ce-Truncated", "true"))
    return out


class PayloadMetrics:
    """``queue_proxy_payload_*``: events by outcome, the queue's depth in events and bytes."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        names, values = list(labels), list(labels.values())
        events = Counter(
            "queue_proxy_payload_events",
            "Payload events by outcome: delivered, dropped (queue full), gave_up (retries "
            "exhausted), rejected (the sink answered 4xx)",
            [*names, "outcome"],
            registry=registry,
        )
        self.outcome = {o: events.labels(*values, o) for o in OUTCOMES}
        self.truncated = Counter(
            "queue_proxy_payload_truncated",
            "Payload events whose body was cut at the size cap",
            names,
            registry=registry,
        ).labels(*values)
        self.queue_events = Gauge(
            "queue_proxy_payload_queue_events", "Payload events queued", names, registry=registry
        ).labels(*values)
        self.queue_bytes = Gauge(
            "queue_proxy_payload_queue_bytes",
            "Payload bytes queued",
            names,
            registry=registry,
        ).labels(*values)


class _Payload:
    """One payload being copied, up to the cap."""

    __slots__ = ("chunks", "size", "truncated")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, chunk: bytes, cap: int) -> None:
        room = cap - self.size
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
        self.chunks.append(chunk)
        self.size += len(chunk)

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Tee:
    """One request's :class:`dataplane.api.Tee`: its two events."""

    __slots__ = ("_ce_id", "_logger", "_request", "_response", "_status", "_type", "request_done")

    def __init__(self, logger: PayloadLogger, ce_id: str, content_type: str) -> None:
        self._logger = logger
        self._ce_id = ce_id
        self._type = content_type
        self.request_done = False
        self._request = _Payload() if logger.config.requests else None
        self._response: _Payload | None = None
        self._status = 0

    def request_body(self, chunk: bytes) -> None:
        if self._request is not None:
            self._request.add(chunk, self._logger.settings.max_body_bytes)

    def request_end(self) -> None:
        self.request_done = True
        if self._request is not None:
            p, self._request = self._request, None
            self._logger.put(REQUEST_TYPE, self._ce_id, self._type, p.body(), p.truncated, 0)

    def response_head(self, status: int, lines: bytes) -> None:
        self._status = status
        self._response = _Payload()
        self._type = _content_type(lines)

    def response_body(self, chunk: bytes) -> None:
        if self._response is not None:
            self._response.add(chunk, self._logger.settings.max_body_bytes)

    def end(self, result: ForwardResult) -> None:
        logger = self._logger
        if not logger.config.responses:
            return
        p = self._response
        if p is None:  # answered by the core itself (502, 504): its status, no body
            logger.put(RESPONSE_TYPE, self._ce_id, "", b"", False, result.status)
            return
        self._response = None
        logger.put(RESPONSE_TYPE, self._ce_id, self._type, p.body(), p.truncated, self._status)


def _content_type(lines: bytes) -> str:
    i = lines.lower().find(b"content-type:")
    if i < 0:
        return ""
    end = lines.find(b"\r\n", i)
    return lines[i + 13 : end if end >= 0 else None].strip().decode("latin-1")


class PayloadLogger:
    """One queue-proxy's payload logging: the tee factory of its route, the bounded queue and
    the workers that deliver it (:meth:`run`)."""

    def __init__(
        self,
        config: PayloadLogging,
        *,
        namespace: str,
        service: str,
        revision: str,
        pod: str,
        registry: CollectorRegistry,
        settings: PayloadQueueSettings | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or PayloadQueueSettings()
        self.metrics = PayloadMetrics(
            registry, {"namespace": namespace, "revision": revision, "pod": pod}
        )
        # the headers every event carries (KServe's extensions; endpoint: the revision)
        self._common = [
            ("Ce-Specversion", "1.0"),
            ("Ce-Source", pod),
            ("Ce-Inferenceservicename", service),
            ("Ce-Namespace", namespace),
            ("Ce-Component", COMPONENT),
            ("Ce-Endpoint", revision),
        ]
        self._queue: collections.deque[_Event] = collections.deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        tls = ssl.create_default_context() if config.tls else None  # (the system's CAs)
        self.pool = UpstreamPool(max_idle_per_host=max(1, self.settings.workers), tls=tls)
        self._dropped_since_log = 0
        self._last_drop_log = -_DROP_LOG_EVERY_S
        self._gave_up_since_log = 0
        self._last_gave_up_log = -_DROP_LOG_EVERY_S
        self._rng = random.Random()
        self.in_delivery = 0  # events a worker holds (sending or waiting to retry)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    # --- the request path: the tee, and the queue ---------------------------------------------

    def start(self, ex: Exchange) -> Tee:
        ce_id, content_type = ex.find_headers(_HEADERS)
        return _Tee(self, ce_id or str(uuid.uuid4()), content_type or "")

    def put(
        self, ce_type: str, ce_id: str, content_type: str, body: bytes, truncated: bool, status: int
    ) -> None:
        """Queue one event, or drop it (counted) when the queue is full: never waits."""
        s = self.settings
        if len(self._queue) >= s.max_events or self._bytes + len(body) > s.max_bytes:
            self._dropped()
            return
        if truncated:
            self.metrics.truncated.inc()
        self._queue.append((ce_type, ce_id, content_type, body, truncated, status, time.time()))
        self._bytes += len(body)
        self._wake.set()

    def _dropped(self) -> None:
        self.metrics.outcome["dropped"].inc()
        self._dropped_since_log += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            log.warning(
                "payload events dropped: the queue is full",
                extra={
                    "dropped": self._dropped_since_log,
                    "queued": len(self._queue),
                    "queued_bytes": self._bytes,
                    "sink": self.config.url,
                },
            )
            self._last_drop_log = now
            self._dropped_since_log = 0

    # --- delivery ------------------------------------------------------------------------------

    async def run(self) -> None:
        """The workers, until cancelled."""
        self.metrics.queue_events.set_function(lambda: len(self._queue))
        self.metrics.queue_bytes.set_function(lambda: self._bytes)
        async with asyncio.TaskGroup() as tg:
            for n in range(self.settings.workers):
                tg.create_task(self._worker(), name=f"payload-log-{n}")

    async def _next(self) -> _Event:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        event = self._queue.popleft()
        self._bytes -= len(event[3])
        return event

    async def _worker(self) -> None:
        while True:
            event = await self._next()
            self.in_delivery += 1
            try:
                self.metrics.outcome[await self._deliver(event)].inc()
            finally:
                self.in_delivery -= 1

    async def _deliver(self, event: _Event) -> str:
        """Send one event: its outcome (delivered, rejected, gave_up)."""
        s = self.settings
        c = self.config
        why = ""
        headers = _event_headers(event, self._common)
        for attempt in range(s.retries + 1):
            if attempt:
                backoff = min(s.backoff_initial_s * 2 ** (attempt - 1), s.backoff_max_s)
                await asyncio.sleep(backoff * (0.5 + self._rng.random() / 2))  # with jitter
            try:
                async with asyncio.timeout(s.attempt_timeout_s):
                    response = await fetch(
                        self.pool,
                        c.hostport,
                        "POST",
                        c.target,
                        headers,
                        event[3],
                        host=c.host,
                        max_body=64 * 1024,
                    )
            except (UpstreamConnectError, UpstreamFailedError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                continue
            except TimeoutError:
                why = f"no answer within {s.attempt_timeout_s:g}s"
                continue
            if response.status < 300:
                return "delivered"
            if 400 <= response.status < 500 and response.status not in (408, 429):
                return "rejected"  # (counted: queue_proxy_payload_events{outcome=rejected})
            why = f"the sink answered {response.status}"
        self._gave_up_since_log += 1
        now = time.monotonic()
        if now - self._last_gave_up_log >= _DROP_LOG_EVERY_S:  # (a sink that is down: rarely)
            log.warning(
                "payload events given up",
                extra={
                    "sink": c.url,
                    "given_up": self._gave_up_since_log,
                    "attempts": s.retries + 1,
                    "error": why,
                },
            )
            self._last_gave_up_log = now
            self._gave_up_since_log = 0
        return "gave_up"

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the queue is delivered: on shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._queue or self.in_delivery) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.pool.close()

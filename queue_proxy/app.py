"""The queue-proxy's composition root: ``python -m queue_proxy`` (configured by environment).

Shutdown sequence (Knative's drainer, reference §3.6): SIGTERM (or ``GET :8022/wait-for-drain``)
→ readiness fails at once → requests keep being served until ``QUEUE_DRAIN_QUIET_PERIOD_SECONDS``
pass with no new one → the serving port closes and the requests in flight finish (bounded by the
revision timeout) → exit 0. A background loop that dies makes the process exit non-zero.

The admin and metrics ports run on the forwarding core's server too, with a small GET router:
no aiohttp in this process, whose import was half of the queue-proxy's ~300 ms start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import dataplane
from dataplane.api import Exchange, Handler, Timeouts
from dataplane.heap import freeze_startup_heap
from dataplane.server import Server
from dataplane.tracing import Tracer, watch_folder
from dataplane.upstream import UpstreamPool
from metrics.clock import Clock, LoopClock
from metrics.logs import configure_logging
from queue_proxy.batching import Batcher, BatchMetrics
from queue_proxy.config import ConfigError, Settings
from queue_proxy.drain import Drainer
from queue_proxy.gpu import GpuMonitor, load_nvml
from queue_proxy.handler import QueueHandler, build_breaker
from queue_proxy.metrics import QueueMetrics
from queue_proxy.payload_log import PayloadLogger
from queue_proxy.probe import Readiness
from queue_proxy.stats import StatReporter

log = logging.getLogger("zeroserve.queue_proxy")

_NVML_DEFAULT: Any = object()
_RESET_DRAIN_AFTER_S = 1.0  # /wait-for-drain not followed by SIGTERM: serve again (Knative)
_PAYLOAD_FLUSH_S = 5.0  # on shutdown, how long queued payload events may take to go out

Route = Callable[[Exchange], Awaitable[None] | None]


def get_router(routes: Mapping[str, Route]) -> Handler:
    """GET (and HEAD) by exact path, for the admin and metrics ports; aiohttp's answers to the
    rest: 404 ``404: Not Found``, 405 ``405: Method Not Allowed`` with ``Allow``."""

    def handler(ex: Exchange) -> Awaitable[None] | None:
        route = routes.get(ex.target.partition("?")[0])
        if route is None:
            ex.respond_now(404, b"404: Not Found")
            return None
        if ex.method not in ("GET", "HEAD"):
            ex.respond_now(405, b"405: Method Not Allowed", (("Allow", "GET,HEAD"),))
            return None
        return route(ex)

    return handler


class QueueProxy:
    """Every part of one queue-proxy, started and stopped together (in-process or as ``main``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        nvml: Any = _NVML_DEFAULT,
        clock: Clock | None = None,
        stats_interval_s: float | None = 1.0,
    ) -> None:
        self.settings = settings
        self.stats_interval_s = stats_interval_s  # None: tests call stats.report() themselves
        self.clock = clock or LoopClock()
        self.metrics = QueueMetrics(
            namespace=settings.namespace, revision=settings.revision, pod=settings.pod
        )
        self.stats = StatReporter(settings.pod, self.clock)
        self.readiness = Readiness(settings.readiness_probe, settings.user_port)
        self.drainer = Drainer(settings.drain_quiet_period_s)
        self.breaker = build_breaker(settings.container_concurrency)
        self.gpu = GpuMonitor(load_nvml() if nvml is _NVML_DEFAULT else nvml, self.metrics)
        cc = settings.container_concurrency
        # Knative's transport: CC idle connections per host, 1000 when CC = 0 (§3.2)
        pool = UpstreamPool(max_idle_per_host=cc if cc > 0 else 1000)
        self.tracer = Tracer(
            "queue-proxy",
            {
                "k8s.namespace.name": settings.namespace,
                "k8s.pod.name": settings.pod,
                "zeroserve.revision": settings.revision,
            },
        )
        self.batcher: Batcher | None = None
        if settings.batching is not None:
            self.batcher = Batcher(
                settings.batching,
                upstream=f"127.0.0.1:{settings.user_port}",
                pool=pool,
                breaker=self.breaker,
                metrics=BatchMetrics(
                    self.metrics.registry,
                    {
                        "namespace": settings.namespace,
                        "revision": settings.revision,
                        "pod": settings.pod,
                    },
                ),
                clock=asyncio.get_running_loop().time,
            )
        self.payload_log: PayloadLogger | None = None
        if settings.payload_logging is not None:  # (queue_proxy.payload_log)
            self.payload_log = PayloadLogger(
                settings.payload_logging,
                namespace=settings.namespace,
                service=settings.service,
                revision=settings.revision,
                pod=settings.pod,
                registry=self.metrics.registry,
            )
        self.server = Server(
            QueueHandler(
                user_port=settings.user_port,
                timeouts=Timeouts(
                    total_s=settings.timeout_s,
                    response_start_s=settings.response_start_timeout_s,
                    idle_s=settings.idle_timeout_s,
                ),
                breaker=self.breaker,
                stats=self.stats,
                metrics=self.metrics,
                readiness=self.readiness,
                drainer=self.drainer,
                batcher=self.batcher,
                tracer=self.tracer,
                tee=self.payload_log,
            ),
            pool=pool,
            header_timeout_s=settings.header_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            max_connections=settings.max_connections,
            on_bad_request=self.metrics.refusal["bad_request"].inc,
            on_header_timeout=self.metrics.refusal["header_timeout"].inc,
            on_connection_refused=self.metrics.refusal["connection_limit"].inc,
        )
        b = self.breaker
        requests = self.stats.requests
        self.metrics.track(
            queue_depth=(lambda: b.in_flight) if b else (lambda: requests.concurrency),
            in_flight=(lambda: b.active) if b else (lambda: requests.concurrency),
        )
        self.admin_server = Server(get_router({"/wait-for-drain": self._wait_for_drain}))
        self.metrics_server = Server(
            get_router({"/stats": self._stats, "/metrics": self._prometheus})
        )
        self._shutdown = asyncio.Event()
        self.stopped = asyncio.Event()

    # --- lifecycle ---
    async def start(self) -> None:
        """Listen on the three ports (or on the sockets handed over by descriptor).

        Raises ConfigError when one of them is the model server's USER_PORT.
        """
        s = self.settings
        for server, port_field, fd in (
            (self.server, "serving_port", s.serving_fd),
            (self.admin_server, "admin_port", s.admin_fd),
            (self.metrics_server, "metrics_port", s.metrics_fd),
        ):
            if fd is None:
                await server.start(s.bind_host, getattr(s, port_field))
            else:
                await server.start(s.bind_host, 0, sock=socket.socket(fileno=fd))
            try:  # (also a port 0 the kernel chose: the model server may not have bound it yet)
                s.check_own_port(port_field, server.port)
            except ConfigError:
                await self._close_all()
                raise
        log.info(
            "queue-proxy started",
            extra={
                "serving_port": self.serving_port,
                "admin_port": self.admin_port,
                "metrics_port": self.metrics_port,
                "user_port": s.user_port,
                "container_concurrency": s.container_concurrency,
                "revision": s.revision,
                "pod": s.pod,
                "dataplane": "compiled" if dataplane.compiled() else "python",
            },
        )

    @property
    def serving_port(self) -> int:
        return self.server.port

    @property
    def admin_port(self) -> int:
        return self.admin_server.port

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port

    def request_shutdown(self) -> None:
        """SIGTERM: start the shutdown sequence (idempotent)."""
        self._shutdown.set()

    async def run(self) -> None:
        """Run the background loops until the shutdown sequence has finished."""
        try:
            async with asyncio.TaskGroup() as tg:
                loops = [
                    tg.create_task(self.readiness.run(), name="readiness"),
                    tg.create_task(self.gpu.run(self.settings.gpu_interval_s), name="gpu"),
                ]
                if self.stats_interval_s is not None:
                    loops.append(tg.create_task(self.stats.run(self.stats_interval_s)))
                if self.settings.ready_fd is not None:
                    loops.append(tg.create_task(self._notify_ready(self.settings.ready_fd)))
                if self.payload_log is not None:
                    loops.append(tg.create_task(self.payload_log.run(), name="payload-log"))
                if self.settings.observability_dir:
                    folder = Path(self.settings.observability_dir)
                    loops.append(tg.create_task(watch_folder(self.tracer, folder), name="tracing"))
                await self._shutdown.wait()
                await self._shutdown_sequence()
                for t in loops:
                    t.cancel()
        finally:
            await self._close_all()
            self.stopped.set()

    async def _notify_ready(self, fd: int) -> None:
        """QUEUE_READY_FD: one line the first time the model server is ready, then close it."""
        try:
            await self.readiness.became_ready.wait()
            if not self.drainer.draining:
                line = json.dumps({"event": "ready", "pid": os.getpid()}) + "\n"
                os.write(fd, line.encode())
        except OSError as exc:  # the supervisor polls as well: not a reason to stop
            log.warning("cannot notify readiness", extra={"fd": fd, "error": str(exc)})
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _shutdown_sequence(self) -> None:
        await self.drainer.drain()
        self.server.close()
        timeout = self.settings.timeout_s or None
        ok = await self.server.wait_closed(timeout)
        if self.payload_log is not None:  # the last events out, within a bound
            await self.payload_log.flush(_PAYLOAD_FLUSH_S)
        log.info(
            "queue-proxy stopped", extra={"in_flight_left": self.server.in_flight, "clean": ok}
        )

    async def _close_all(self) -> None:
        for server in (self.server, self.admin_server, self.metrics_server):
            server.close()
        await self.server.wait_closed(0)
        await asyncio.to_thread(self.tracer.close)  # (the last spans out)
        if self.batcher is not None:
            self.batcher.close()
        if self.payload_log is not None:
            self.payload_log.close()
        # A /wait-for-drain still in flight has had its drain: a second to send its answer.
        await self.admin_server.wait_closed(1.0)
        await self.metrics_server.wait_closed(0)

    # --- admin and metrics endpoints ---
    async def _wait_for_drain(self, ex: Exchange) -> None:
        """The preStop hook: answer once drained. If no SIGTERM follows within a second (the
        kubelet restarts only the model server, after a failed liveness probe), the drain is
        reset and the queue-proxy serves again, as Knative's does."""
        await self.drainer.drain()
        await ex.respond(200, b"drained\n")
        loop = asyncio.get_running_loop()
        loop.call_later(_RESET_DRAIN_AFTER_S, self._reset_drain_unless_stopping)

    def _reset_drain_unless_stopping(self) -> None:
        if not self._shutdown.is_set():
            self.drainer.reset()

    def _stats(self, ex: Exchange) -> None:
        body = self.stats.latest.to_json()
        ex.respond_now(200, body, (("Content-Type", "application/json"),))

    def _prometheus(self, ex: Exchange) -> None:
        body = generate_latest(self.metrics.registry)
        ex.respond_now(200, body, (("Content-Type", CONTENT_TYPE_LATEST),))


async def serve(settings: Settings) -> None:
    """Start, install the signal handlers, and run until shut down."""
    qp = QueueProxy(settings)
    await qp.start()
    freeze_startup_heap()  # (a full collection would traverse it all: ms without serving)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qp.request_shutdown)
    await qp.run()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        settings = Settings.from_env(os.environ if env is None else env)
    except ConfigError as exc:
        print(f"queue-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except ConfigError as exc:
        print(f"queue-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("queue-proxy cannot start", extra={"error": str(exc)})
        return 1
    except BaseExceptionGroup as exc:
        log.error("queue-proxy loop died", extra={"error": repr(exc.exceptions)})
        return 1
    return 0

"""The queue-proxy's composition root: ``python -m queue_proxy`` (configured by environment).

Shutdown sequence (Knative's drainer, reference §3.6): SIGTERM (or ``GET :8022/wait-for-drain``)
→ readiness fails at once → requests keep being served until ``QUEUE_DRAIN_QUIET_PERIOD_SECONDS``
pass with no new one → the serving port closes and the requests in flight finish (bounded by the
revision timeout) → exit 0. A background loop that dies makes the process exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dataplane.api import Timeouts
from dataplane.server import Server
from dataplane.upstream import UpstreamPool
from metrics.clock import Clock, LoopClock
from metrics.logs import configure_logging
from queue_proxy.config import ConfigError, Settings
from queue_proxy.drain import Drainer
from queue_proxy.gpu import GpuMonitor, load_nvml
from queue_proxy.handler import build_breaker, build_handler
from queue_proxy.metrics import QueueMetrics
from queue_proxy.probe import Readiness
from queue_proxy.stats import StatReporter

log = logging.getLogger("queue_proxy")

_NVML_DEFAULT: Any = object()


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
        self.server = Server(
            build_handler(
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
            ),
            # Knative's transport: CC idle connections per host, 1000 when CC = 0 (§3.2)
            pool=UpstreamPool(max_idle_per_host=cc if cc > 0 else 1000),
            on_bad_request=self.metrics.refusal["bad_request"].inc,
        )
        b = self.breaker
        requests = self.stats.requests
        self.metrics.track(
            queue_depth=(lambda: b.in_flight) if b else (lambda: requests.concurrency),
            in_flight=(lambda: b.active) if b else (lambda: requests.concurrency),
        )
        self._runners: list[web.AppRunner] = []
        self._sites: list[web.TCPSite] = []
        self._shutdown = asyncio.Event()
        self.stopped = asyncio.Event()

    # --- lifecycle ---
    async def start(self) -> None:
        s = self.settings
        await self.server.start(s.bind_host, s.serving_port)
        admin = web.Application()
        admin.router.add_get("/wait-for-drain", self._wait_for_drain)
        metrics = web.Application()
        metrics.router.add_get("/stats", self._stats)
        metrics.router.add_get("/metrics", self._prometheus)
        for app, port in ((admin, s.admin_port), (metrics, s.metrics_port)):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, s.bind_host, port)
            await site.start()
            self._runners.append(runner)
            self._sites.append(site)
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
            },
        )

    @property
    def serving_port(self) -> int:
        return self.server.port

    def _site_port(self, i: int) -> int:
        sockets = getattr(self._sites[i]._server, "sockets", None)  # asyncio's or uvloop's
        assert sockets
        return int(sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int:
        return self._site_port(0)

    @property
    def metrics_port(self) -> int:
        return self._site_port(1)

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
        log.info(
            "queue-proxy stopped", extra={"in_flight_left": self.server.in_flight, "clean": ok}
        )

    async def _close_all(self) -> None:
        self.server.close()
        await self.server.wait_closed(0)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    # --- admin and metrics endpoints ---
    async def _wait_for_drain(self, request: web.Request) -> web.Response:
        await self.drainer.drain()
        return web.Response(text="drained\n")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=self.stats.latest.to_json(), content_type="application/json")

    async def _prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


async def serve(settings: Settings) -> None:
    """Start, install the signal handlers, and run until shut down."""
    qp = QueueProxy(settings)
    await qp.start()
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
    configure_logging(settings.log_level)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except OSError as exc:
        log.error("queue-proxy cannot start", extra={"error": str(exc)})
        return 1
    except BaseExceptionGroup as exc:
        log.error("queue-proxy loop died", extra={"error": repr(exc.exceptions)})
        return 1
    return 0

"""Composition root of the activator: ``python -m activator``, and :func:`build_activator` for the
local runtime, which embeds the activator in its own process from ports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

import dataplane
from activator.handler import ActivatorHandler, NotReadyReason
from activator.metrics import ActivatorMetrics
from activator.peers import ActivatorPeers, StaticPeers
from activator.prober import EndpointProber
from activator.reporter import ConcurrencyReporter
from activator.routing import Router, RouteTable
from activator.shadow import Mirror, ShadowSettings
from activator.sinks import InProcessStatSink, StatSink, WebsocketStatSink
from activator.throttler import PeerInfo, Throttler
from cluster.envparse import non_negative_int, seconds
from cluster.memory import MemoryEndpoints, MemoryRoutes
from cluster.observability import CONFIGMAP as OBSERVABILITY_CONFIGMAP
from cluster.observability import ObservabilityError, parse_tracing
from cluster.ports import ConfigSource, EndpointSource, PodEndpoint, RouteSource
from cluster.spec import RevisionKey
from dataplane.heap import freeze_startup_heap
from dataplane.server import Server
from dataplane.tracing import ColdStartTraces, Tracer
from metrics.logs import configure_logging

if TYPE_CHECKING:
    from cluster.kubernetes.api import KubeApi

log = logging.getLogger("zeroserve.activator")

# why the activator's server refused a client itself, before any routing (activator_refusals)
REFUSAL_REASONS = ("bad_request", "header_timeout", "connection_limit")


class ConfigError(ValueError):
    """A malformed flag or environment variable; the message starts with its name and value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivatorSettings:
    """How one activator runs (the local runtime passes short periods)."""

    pod_name: str = "activator"
    """The stat's ``pod_name``: this activator's name."""
    queue_depth: int = 10_000
    """Requests that may wait per revision; the next one gets 503 at once."""
    report_period_s: float = 1.0
    """Seconds between two stat reports to the autoscaler."""
    probe_timeout_s: float = 0.3
    """Timeout of one round of endpoint probes, seconds."""
    probe_period_s: float = 0.2
    """Seconds between probe rounds while some pods are not healthy yet."""
    drain_quiet_period_s: float = 30.0
    """On drain, seconds with no request before the server closes."""
    shutdown_timeout_s: float = 300.0
    """On drain, how long requests in flight may take to finish after the server closes."""
    header_timeout_s: float = 60.0
    """A client's request head must be complete within this many seconds, else 408 and the
    connection closes (0 = no limit): Knative's ReadHeaderTimeout (1 min), nginx's
    client_header_timeout (60 s)."""
    keepalive_timeout_s: float = 75.0
    """Keep-alive client connections idle this many seconds between requests close (0 = never):
    nginx's keepalive_timeout."""
    max_connections: int | None = None
    """Client connections open at once; one more is closed at once and counted (0 = no cap,
    None = half the open-file limit, see ``dataplane.server.default_max_connections``)."""
    seed: int | None = None
    """Seed of the traffic-split and load-balancing RNG (tests); None = random."""
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    """Bounds of the copies sent to shadow revisions (docs/shadow.md)."""


class Activator:
    """One activator: its server, its probe and report loops, and its metrics."""

    def __init__(
        self,
        *,
        routes: RouteSource,
        endpoints: EndpointSource,
        stats: StatSink,
        peers: ActivatorPeers,
        settings: ActivatorSettings,
        not_ready_reason: NotReadyReason | None = None,
        observability: ConfigSource | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        rng = random.Random(settings.seed)
        self.metrics = ActivatorMetrics()
        refusals = Counter(
            "activator_refusals",
            "Clients the activator's server refused itself, by reason: a malformed request "
            "(400), a request head past the header timeout (408), a connection over the cap.",
            ["reason"],
            registry=self.metrics.registry,
        )
        self.refusal = {r: refusals.labels(r) for r in REFUSAL_REASONS}
        self.throttler = Throttler(peers=peers.current(), queue_depth=settings.queue_depth, rng=rng)
        self.router = Router(routes, rng=rng, on_change=self._routes_changed)
        self.reporter = ConcurrencyReporter(settings.pod_name)
        self.mirror = Mirror(
            throttler=self.throttler,
            reporter=self.reporter,
            sink=stats,
            metrics=self.metrics,
            settings=settings.shadow,
            rng=rng,
        )
        self.mirror.set_services(routes.current())
        # tracing, from config-observability (the spec's observability block locally)
        self.tracer = Tracer("activator", {"k8s.pod.name": settings.pod_name})
        self.cold_start_traces = ColdStartTraces(self.tracer)
        self._unsubscribe_observability: Callable[[], None] = lambda: None
        if observability is not None:
            self._observability_changed(observability.current())
            self._unsubscribe_observability = observability.subscribe(self._observability_changed)
        self.handler = ActivatorHandler(
            router=self.router,
            throttler=self.throttler,
            reporter=self.reporter,
            sink=stats,
            metrics=self.metrics,
            not_ready_reason=not_ready_reason,
            tees=self.mirror.tee_for,
            tracer=self.tracer,
            cold_starts=self.cold_start_traces,
        )
        self.prober = EndpointProber(
            endpoints,
            self.throttler.set_addresses,
            probe_timeout_s=settings.probe_timeout_s,
            probe_period_s=settings.probe_period_s,
        )
        self._unsubscribe_peers = peers.subscribe(self.throttler.set_peers)
        self.server: Server | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.failed = asyncio.Event()  # a background loop died

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, metrics_port: int | None = None) -> None:
        """Serve on ``host:port`` (0 = ephemeral, see :attr:`port`); metrics if a port is given."""
        self._spawn(self.prober.run(), "prober")
        self._spawn(self._report_loop(), "reporter")
        if isinstance(self.stats, WebsocketStatSink):
            self._spawn(self.stats.run(), "stat-websocket")
        # the bound method: calling it skips the instance-call lookup on every request
        s = self.settings
        self.server = Server(
            self.handler.__call__,
            header_timeout_s=s.header_timeout_s,
            keepalive_timeout_s=s.keepalive_timeout_s,
            max_connections=s.max_connections,
            on_bad_request=self.refusal["bad_request"].inc,
            on_header_timeout=self.refusal["header_timeout"].inc,
            on_connection_refused=self.refusal["connection_limit"].inc,
        )
        await self.server.start(host, port)
        if metrics_port is not None:
            app = web.Application()
            app.router.add_get("/metrics", self._metrics)
            self._metrics_runner = web.AppRunner(app, access_log=None)
            await self._metrics_runner.setup()
            await web.TCPSite(self._metrics_runner, host, metrics_port).start()
        log.info(
            "activator serving",
            extra={
                "host": host,
                "port": self.port,
                "dataplane": "compiled" if dataplane.compiled() else "python",
            },
        )

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("not started")
        return self.server.port

    async def drain(self) -> None:
        """Health answers 503 from now; once no request came for the quiet period, stop
        accepting and wait for requests in flight (at most ``shutdown_timeout_s``)."""
        loop = asyncio.get_running_loop()
        self.handler.draining = True
        started = loop.time()
        quiet = self.settings.drain_quiet_period_s
        while True:
            last = max(self.handler.last_request_at, started)
            left = last + quiet - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(left)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed(self.settings.shutdown_timeout_s)
        log.info("activator drained", extra={"pod": self.settings.pod_name})

    async def close(self) -> None:
        """Stop everything at once (after :meth:`drain`, or in tests)."""
        self.router.close()
        self._unsubscribe_peers()
        self._unsubscribe_observability()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed(0)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.mirror.close()
        await asyncio.to_thread(self.tracer.close)  # (the last spans out)
        with contextlib.suppress(Exception):  # a final report, so the last period is not lost
            self.stats.put(self.reporter.report(asyncio.get_running_loop().time()))

    # --- internals ---------------------------------------------------------------------------

    def _observability_changed(self, data: Mapping[str, str]) -> None:
        """config-observability changed: tracing follows, or keeps the last good settings."""
        try:
            self.tracer.configure(parse_tracing(data, strict=False))
        except ObservabilityError as exc:
            log.error(
                "observability config rejected, keeping the last good one",
                extra={"error": str(exc)},
            )

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"activator-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "activator loop died",
                extra={"task": task.get_name(), "error": repr(task.exception())},
            )
            self.failed.set()

    async def _report_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.settings.report_period_s
        next_at = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += period
            batch = self.reporter.report(loop.time(), time.time())
            if batch:
                self.metrics.stat_batches.inc()
                self.stats.put(batch)

    def _routes_changed(self, table: RouteTable) -> None:
        self.throttler.update_revisions(table.revisions())
        self.mirror.set_services(table.services())
        self.handler.routes_changed()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


def build_activator(
    routes: RouteSource,
    endpoints: EndpointSource,
    stats: StatSink,
    peers: ActivatorPeers | None = None,
    settings: ActivatorSettings | None = None,
    not_ready_reason: NotReadyReason | None = None,
    observability: ConfigSource | None = None,
) -> Activator:
    """The activator from its ports; then ``await start(host, port)``, ``drain()``, ``close()``.

    The local runtime passes ``InProcessStatSink(collector_callable)`` as ``stats``, and as
    ``not_ready_reason`` why a revision cannot start (its artifact fetch failing), which a
    request that timed out waiting for a pod gets in its 503.
    """
    return Activator(
        routes=routes,
        endpoints=endpoints,
        stats=stats,
        peers=peers or StaticPeers(),
        settings=settings or ActivatorSettings(),
        not_ready_reason=not_ready_reason,
        observability=observability,
    )


# --- the process -----------------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m activator", description=__doc__)
    p.add_argument("--host", default=_env("ACTIVATOR_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(_env("ACTIVATOR_PORT", "8080")))
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", "9090")))
    p.add_argument(
        "--autoscaler-url",
        default=_env("AUTOSCALER_URL", ""),
        help="ws://<autoscaler>:8080/ (empty: stats are only logged)",
    )
    p.add_argument("--pod-name", default=_env("POD_NAME", "activator"))
    p.add_argument(
        "--drain-quiet-period",
        type=float,
        default=float(_env("DRAIN_QUIET_PERIOD_SECONDS", "30")),
        help="seconds with no request before a draining activator closes",
    )
    p.add_argument("--spec", default=_env("ZEROSERVE_SPEC", ""), help="service spec YAML")
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NS/REVISION=HOST:PORT",
        help="a static pod of a revision (repeatable), for standalone use",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    p.add_argument(
        "--kubernetes",
        action="store_true",
        default=bool(_env("ZEROSERVE_KUBERNETES", "")),
        help="routes, endpoints and peers from the Kubernetes API (in-cluster or --kubeconfig)",
    )
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG", "") or None)
    p.add_argument("--pod-ip", default=_env("POD_IP", ""), help="own IP, for the peer index")
    for flag, var, _, _, help_ in _LIMITS:
        p.add_argument(flag, metavar=var, help=f"{help_} (default: ${var}, else the default)")
    return p.parse_args(list(argv))


# the client-connection limits: (flag, environment variable, settings field, parser, help)
_LIMITS: tuple[tuple[str, str, str, Callable[[str], Any], str], ...] = (
    (
        "--header-timeout",
        "ACTIVATOR_HEADER_TIMEOUT_SECONDS",
        "header_timeout_s",
        seconds,
        "seconds a client has to send a whole request head, else 408 (0 = no limit; 60)",
    ),
    (
        "--keepalive-timeout",
        "ACTIVATOR_KEEPALIVE_TIMEOUT_SECONDS",
        "keepalive_timeout_s",
        seconds,
        "seconds an idle keep-alive client connection stays open (0 = no limit; 75)",
    ),
    (
        "--max-connections",
        "ACTIVATOR_MAX_CONNECTIONS",
        "max_connections",
        non_negative_int,
        "client connections open at once (0 = no cap; half the open-file limit)",
    ),
    (
        "--shadow-max-in-flight",
        "ACTIVATOR_SHADOW_MAX_IN_FLIGHT",
        "shadow.max_in_flight",
        non_negative_int,
        "copies to one shadow revision held at once; more are dropped (100)",
    ),
    (
        "--shadow-max-body-bytes",
        "ACTIVATOR_SHADOW_MAX_BODY_BYTES",
        "shadow.max_body_bytes",
        non_negative_int,
        "the largest request body copied to a shadow, and response body compared (1 MiB)",
    ),
)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ActivatorSettings:
    """The activator's settings from its flags, else its environment, else the defaults;
    :class:`ConfigError` names the flag or variable and its value."""
    values: dict[str, Any] = {}
    for flag, var, name, parse, _ in _LIMITS:
        raw = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        source = flag
        if raw is None:
            raw, source = env.get(var) or None, var
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source} = {raw!r}: {exc}") from exc
    shadow = {k.removeprefix("shadow."): values.pop(k) for k in list(values) if "." in k}
    return ActivatorSettings(
        pod_name=args.pod_name,
        drain_quiet_period_s=args.drain_quiet_period,
        shadow=ShadowSettings(**shadow),
        **values,
    )


def _static_endpoints(specs: Sequence[str]) -> MemoryEndpoints:
    endpoints = MemoryEndpoints()
    by_rev: dict[RevisionKey, list[PodEndpoint]] = {}
    for item in specs:
        rev, sep, address = item.partition("=")
        ns, slash, name = rev.partition("/")
        if not sep or not slash or not address:
            raise SystemExit(f"--endpoint {item!r}: expected NS/REVISION=HOST:PORT")
        pods = by_rev.setdefault(RevisionKey(ns, name), [])
        pods.append(PodEndpoint(name=f"{name}-{len(pods)}", address=address, stats_address=""))
    for key, pods in by_rev.items():
        endpoints.set_endpoints(key, pods)
    return endpoints


def _log_stats(batch: list[Any]) -> None:
    log.debug("stats", extra={"stats": [s.to_dict() for s in batch]})


async def _serve(args: argparse.Namespace, settings: ActivatorSettings) -> int:
    if args.kubernetes:
        from cluster.kubernetes.runtime import KubeWiring, system_namespace

        kube = await KubeWiring.connect(args.kubeconfig)
        try:
            peers = kube.activator_peers(
                system_namespace(), args.pod_ip, lambda count, index: PeerInfo(count, index)
            )
            routes_, endpoints_ = kube.routes(), kube.endpoints()
            observability = kube.config(system_namespace(), OBSERVABILITY_CONFIGMAP)
            await kube.start()
            return await _run(
                args, settings, routes_, endpoints_, peers, observability, pods=kube.api
            )
        finally:
            await kube.close()
    routes = MemoryRoutes()
    if args.spec:
        from cluster.spec_loader import load_spec

        routes = MemoryRoutes(load_spec(args.spec).services)
    endpoints = _static_endpoints(args.endpoint)
    return await _run(args, settings, routes, endpoints, StaticPeers(PeerInfo()))


async def _run(
    args: argparse.Namespace,
    settings: ActivatorSettings,
    routes: RouteSource,
    endpoints: EndpointSource,
    peers: ActivatorPeers,
    observability: ConfigSource | None = None,
    pods: KubeApi | None = None,
) -> int:
    """Serve until SIGTERM; ``pods``: on Kubernetes, where a cold start's steps are read from
    the pod that served it (the ``cold_start`` span's events)."""
    stats: StatSink = (
        WebsocketStatSink(args.autoscaler_url)
        if args.autoscaler_url
        else InProcessStatSink(_log_stats)
    )
    act = build_activator(routes, endpoints, stats, peers, settings, observability=observability)
    pod_starts = None
    if pods is not None:
        from cluster.kubernetes.podstarts import PodStarts

        traces = act.cold_start_traces
        pod_starts = PodStarts(pods, endpoints, wanted=traces.wants, started=traces.started)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await act.start(args.host, args.port, metrics_port=args.metrics_port)
    freeze_startup_heap()  # (a full collection would traverse it all: ms without serving)
    waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(act.failed.wait())}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    if pod_starts is not None:
        pod_starts.close()
    if act.failed.is_set():
        await act.close()
        return 1
    log.info("draining", extra={"quiet_period_s": args.drain_quiet_period})
    await act.drain()
    await act.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(args, os.environ)
    except ConfigError as exc:
        print(f"activator: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(args, settings))

"""The autoscaler's composition root: ``python -m autoscaler``.

Reads flags, configures JSON logging, picks uvloop, and serves the stat websocket (:8080) and the
status/metrics app (:9090) around one :class:`~autoscaler.engine.Autoscaler`, until SIGTERM/SIGINT.

With ``--kubernetes`` it watches the cluster (revision Deployments, EndpointSlices,
``config-autoscaler``), campaigns for the leader Lease and scales only while it leads; a replica
that stops leading closes its activators' stat sockets (1012) so they reconnect to the new leader.
With ``--spec FILE`` it takes revisions and config from a spec file and scales an in-memory target
that only logs what it is asked. The local runtime embeds :func:`autoscaler.engine.build_autoscaler`
with its supervisor as the scale target instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import uvloop
from aiohttp import web

from autoscaler.engine import Autoscaler, build_autoscaler
from autoscaler.statserver import build_stat_app, close_sockets
from autoscaler.status import build_status_app
from cluster.memory import MemoryConfig, MemoryEndpoints, MemoryRevisions
from cluster.ports import InitializedInMemory
from cluster.spec import RevisionKey
from cluster.spec_loader import load_spec
from metrics.logs import configure_logging

log = logging.getLogger("zeroserve.autoscaler")

SHUTDOWN_TIMEOUT_S = 5.0


class LoggingScaleTarget(InitializedInMemory):
    """A scale target that only logs and remembers (standalone mode, before Kubernetes)."""

    def __init__(self) -> None:
        super().__init__()
        self.replicas: dict[RevisionKey, int] = {}

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        self.replicas[key] = replicas
        log.info("scale target asked", extra={"revision": str(key), "replicas": replicas})

    async def ready_pods(self, key: RevisionKey) -> int | None:
        return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m autoscaler", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--spec", help="service spec file (revisions and config)")
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="revisions, pods, config-autoscaler and scaling through the Kubernetes API, "
        "with leader election (in-cluster, or --kubeconfig)",
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None)
    parser.add_argument(
        "--pod-name",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's identity in the leader Lease (POD_NAME)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument("--stat-port", type=int, default=8080, help="stat websocket port (8080)")
    parser.add_argument("--status-port", type=int, default=9090, help="status/metrics port (9090)")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    args = parser.parse_args(argv)
    if not args.spec and not args.kubernetes:
        parser.error("one of --spec or --kubernetes is required")
    return args


async def serve(
    autoscaler: Autoscaler,
    *,
    host: str,
    stat_port: int,
    status_port: int,
    stop: asyncio.Event | None = None,
    stat_app: web.Application | None = None,
) -> None:
    """Run the autoscaler and its two servers until ``stop`` is set (by default: on SIGTERM or
    SIGINT) or a loop dies."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    stat_runner = web.AppRunner(
        stat_app or build_stat_app(autoscaler.record_stats), shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    status_runner = web.AppRunner(
        build_status_app(autoscaler.status, autoscaler.metrics), shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await autoscaler.start()
    try:
        for runner, port in ((stat_runner, stat_port), (status_runner, status_port)):
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
        log.info("autoscaler serving", extra={"stat_port": stat_port, "status_port": status_port})
        async with asyncio.TaskGroup() as group:
            loops = group.create_task(autoscaler.wait())
            await stop.wait()
            loops.cancel()
    finally:
        # Stat sockets are closed with 1012 by the stat app's on_shutdown hook.
        await stat_runner.cleanup()
        await status_runner.cleanup()
        await autoscaler.close()


async def _amain_kubernetes(args: argparse.Namespace) -> int:
    """Every replica keeps its metrics warm; only the Lease holder scales (LeaderScaleTarget)."""
    from cluster.kubernetes.runtime import (
        KubeWiring,
        LeaderScaleTarget,
        autoscaler_elector,
        system_namespace,
    )

    kube = await KubeWiring.connect(args.kubeconfig)
    try:
        namespace = system_namespace()
        stat_app: web.Application | None = None

        def hand_over() -> None:
            # A replica that stops leading closes its activators' sockets (1012): they reconnect
            # through the Service, which selects the leader's label, so stats reach the new leader.
            if stat_app is not None:
                kube.spawn(close_sockets(stat_app, "not the leader any more"), "stat-handover")

        elector = autoscaler_elector(kube, namespace, args.pod_name, on_stopped_leading=hand_over)
        autoscaler = build_autoscaler(
            kube.revisions(),
            kube.endpoints(),
            LeaderScaleTarget(kube.scale_target(), elector),
            kube.config(namespace),
        )
        stat_app = build_stat_app(autoscaler.record_stats)
        await kube.start()
        kube.spawn(elector.run(), "leader-election")
        await serve(
            autoscaler,
            host=args.host,
            stat_port=args.stat_port,
            status_port=args.status_port,
            stat_app=stat_app,
        )
        return 0
    finally:
        await kube.close()


async def _amain(args: argparse.Namespace) -> int:
    if args.kubernetes:
        return await _amain_kubernetes(args)
    spec = load_spec(args.spec)
    autoscaler = build_autoscaler(
        MemoryRevisions(spec.revisions()),
        MemoryEndpoints(),
        LoggingScaleTarget(),
        MemoryConfig(spec.config),
    )
    await serve(
        autoscaler,
        host=args.host,
        stat_port=args.stat_port,
        status_port=args.status_port,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(_amain(args))
        except Exception:
            log.exception("autoscaler failed")
            return 1
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()

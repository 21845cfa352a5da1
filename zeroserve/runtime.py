"""The local all-in-one runtime: activator, autoscaler and the process supervisor in one process.

The same parts that run as separate pods on Kubernetes, composed over in-memory ports: the spec
file gives the routes, the revisions and ``config-autoscaler``; the supervisor is the scale target
and the endpoint source; the activator's stats go straight to the autoscaler's collector.
Changing the spec file while it runs applies the change (routes, revisions, config) without a
restart; an invalid file (its ``config:`` checked by the autoscaler's own rules) is rejected
whole with the reason and the last good one stays in force. At start, an invalid file is an error.

A revision with a ``predictor`` has its model fetched in the background as soon as it appears
(:mod:`zeroserve.prefetch`): its replicas wait for the artifact before they start, and until the
fetch succeeds its reason shows in ``/v1/revisions`` (``not_ready_reason``) and in the 503 of a
request that timed out waiting for the revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from activator.app import Activator, ActivatorSettings, build_activator
from activator.sinks import InProcessStatSink
from autoscaler.engine import Autoscaler, build_autoscaler
from autoscaler.status import RevisionStatus, build_status_app
from cluster.local.supervisor import LocalSupervisor, SupervisorSettings
from cluster.memory import MemoryConfig, MemoryRevisions, MemoryRoutes
from cluster.observability import write_folder
from cluster.spec import RevisionKey, Spec
from cluster.spec_loader import SpecError
from zeroserve.prefetch import ArtifactPrefetcher, PrefetchSettings
from zeroserve.specfile import SpecReader, config_warnings

log = logging.getLogger("zeroserve.runtime")


class _Forward(Collector):
    """Another registry's metrics, in this one's scrape: the status port's ``/metrics`` serves
    the activator's beside the autoscaler's (their names differ: ``activator_*``,
    ``autoscaler_*``), so one local scrape sees ``activator_cold_start_wait_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSettings:
    """Where the runtime listens and how it runs replicas."""

    host: str = "127.0.0.1"
    port: int = 8080
    """The ingress (activator) port; 0 picks a free one."""
    status_port: int = 9090
    """The autoscaler's ``/v1/revisions`` and ``/metrics`` port; 0 picks a free one."""
    activator_metrics_port: int | None = None
    """The activator's own Prometheus port, as on Kubernetes (None: none). Its metrics are on
    the status port's ``/metrics`` either way."""
    watch_spec_s: float = 1.0
    """How often the spec file is checked for changes (0: never)."""
    drain_quiet_period_s: float = 0.5
    """On shutdown, the activator stops after this many seconds without a new request."""
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    prefetch: PrefetchSettings = field(default_factory=PrefetchSettings)


class LocalRuntime:
    """``zeroserve up``: see the module docstring."""

    def __init__(self, spec_path: str | os.PathLike[str], settings: RuntimeSettings) -> None:
        self.spec_path = Path(spec_path)
        self.settings = settings
        # The reader remembers an InferenceService file's rollouts (its canary) between reloads.
        self._reader = SpecReader(self.spec_path)
        self.spec: Spec = self._reader.load()  # SpecError: the runtime does not start
        self._warn_unknown_keys()
        self._mtime = self._stat_mtime()
        # config-observability: the activator's tracing in process; the queue-proxies read the
        # folder this runtime writes (each key a file, as a mounted ConfigMap)
        self.observability = MemoryConfig(self.spec.observability)
        self._observability_dir = Path(tempfile.mkdtemp(prefix="zeroserve-observability-"))
        write_folder(self._observability_dir, self.spec.observability)
        self.observability.subscribe(partial(write_folder, self._observability_dir))
        supervisor = replace(settings.supervisor, observability_dir=str(self._observability_dir))
        self.supervisor = LocalSupervisor(supervisor)
        self.revisions = MemoryRevisions(self.spec.revisions())
        self.routes = MemoryRoutes(self.spec.services)
        self.config = MemoryConfig(self.spec.config)
        # the artifacts first: a new revision's model starts downloading before any replica
        self.prefetch = ArtifactPrefetcher(settings.prefetch)
        self.prefetch.set_revisions(self.revisions.current())
        self.revisions.subscribe(self.prefetch.set_revisions)
        self.supervisor.before_start = self.prefetch.wait_ready
        if self.supervisor.models is not None:  # a parked process loads a fetched model
            self.supervisor.models.artifact = self.prefetch.local_path
            self.prefetch.on_ready = self.supervisor.models.artifact_ready
        self.supervisor.set_revisions(self.revisions.current())
        self.revisions.subscribe(self.supervisor.set_revisions)
        self.autoscaler: Autoscaler = build_autoscaler(
            self.revisions, self.supervisor, self.supervisor, self.config
        )
        self.activator: Activator = build_activator(
            self.routes,
            self.supervisor,
            InProcessStatSink(self.autoscaler.record_stats),
            settings=ActivatorSettings(
                pod_name="activator-local", drain_quiet_period_s=settings.drain_quiet_period_s
            ),
            not_ready_reason=self.prefetch.not_ready_reason,
            observability=self.observability,
        )
        # a request that waited for a cold start gets its steps in its trace once known
        traces = self.activator.cold_start_traces
        self.supervisor.cold_starts.listeners.append(
            lambda cold: traces.cold_start(
                cold.namespace, cold.revision, cold.started_at, cold.phases
            )
        )
        self.autoscaler.metrics.registry.register(_Forward(self.activator.metrics.registry))
        # zeroserve_cold_start_phase_seconds, beside them on the status port's /metrics
        self.autoscaler.metrics.registry.register(_Forward(self.supervisor.cold_starts.registry))
        self._status_runner: web.AppRunner | None = None
        self._status_port = 0
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.activator.port

    @property
    def status_port(self) -> int:
        return self._status_port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def status(self) -> list[RevisionStatus]:
        """The autoscaler's rows, each with why its revision cannot start, if it cannot, and
        its last cold start by phase."""
        reason = self.prefetch.not_ready_reason
        cold = self.supervisor.cold_starts.last
        return [
            replace(
                row,
                not_ready_reason=reason(RevisionKey(row.namespace, row.revision))
                or row.not_ready_reason,
                last_cold_start=cold(row.namespace, row.revision),
            )
            for row in self.autoscaler.status()
        ]

    async def start(self) -> None:
        # First: the downloads, and the queue-proxy zygote's imports, while the rest starts.
        await self.prefetch.start()
        await self.supervisor.start()
        await self.autoscaler.start()
        runner = web.AppRunner(
            build_status_app(self.status, self.autoscaler.metrics), access_log=None
        )
        await runner.setup()
        self._status_runner = runner
        sock = socket.create_server((self.settings.host, self.settings.status_port))
        self._status_port = int(sock.getsockname()[1])
        await web.SockSite(runner, sock).start()
        await self.activator.start(
            self.settings.host,
            self.settings.port,
            metrics_port=self.settings.activator_metrics_port,
        )
        if self.settings.watch_spec_s > 0:
            self._watch_task = asyncio.create_task(self._watch_spec(), name="spec-watch")

    async def wait(self) -> None:
        """Until a component's loop dies (then raises)."""
        failed = asyncio.create_task(self.activator.failed.wait())
        scaler = asyncio.create_task(self.autoscaler.wait())
        done, pending = await asyncio.wait({failed, scaler}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
        raise RuntimeError("a runtime loop stopped")

    async def close(self) -> None:
        """Graceful: stop taking requests (drain), stop scaling, drain and stop every replica."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        with contextlib.suppress(RuntimeError):
            await self.activator.drain()
        await self.activator.close()
        await self.autoscaler.close()
        await self.supervisor.close()
        await self.prefetch.close()
        if self._status_runner is not None:
            await self._status_runner.cleanup()
        shutil.rmtree(self._observability_dir, ignore_errors=True)

    # -- the spec file --------------------------------------------------------------------------

    def _stat_mtime(self) -> float:
        try:
            return self.spec_path.stat().st_mtime
        except OSError:
            return 0.0

    def reload(self) -> bool:
        """Apply the spec file as it is now; False (and a log line) if it is invalid."""
        try:
            spec = self._reader.load()
        except (SpecError, OSError) as exc:
            # Whole: with a bad config part, neither the config nor the revisions and routes
            # of that file apply (the autoscaler keeps the last good config).
            log.error(
                "spec rejected, keeping the last good one",
                extra={"spec": str(self.spec_path), "error": str(exc)},
            )
            return False
        self.spec = spec
        self._warn_unknown_keys()
        self.revisions.set(dict(spec.revisions()))
        self.routes.set_services(spec.services)
        self.config.set(dict(spec.config))
        self.observability.set(dict(spec.observability))
        log.info("spec applied", extra={"spec": str(self.spec_path)})
        return True

    def _warn_unknown_keys(self) -> None:
        for warning in config_warnings(self.spec):
            log.warning(
                "config key ignored", extra={"spec": str(self.spec_path), "warning": warning}
            )

    async def _watch_spec(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_spec_s)
            mtime = self._stat_mtime()
            if mtime != self._mtime:
                self._mtime = mtime
                self.reload()

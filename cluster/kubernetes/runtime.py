"""Wiring for the composition roots: one API connection, shared informers, the ports on top.

``python -m activator --kubernetes`` and ``python -m autoscaler --kubernetes`` build a
:class:`KubeWiring`, ask it for the ports they need (each informer is made once and shared, so
the routes and the revisions read the same Deployment cache), ``start()`` it (which waits for the
first list of every informer) and ``close()`` it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from cluster.kubernetes.adapters import (
    KubeActivatorPeers,
    KubeConfig,
    KubeEndpoints,
    KubeRevisions,
    KubeRoutes,
    KubeScaleTarget,
)
from cluster.kubernetes.api import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    AioKubeApi,
    KubeApi,
    Resource,
)
from cluster.kubernetes.informer import Informer
from cluster.kubernetes.leader import LeaderElector, mark_leader_pod
from cluster.kubernetes.scheme import REVISION_LABEL, ROUTE_LABEL
from cluster.ports import ScaleTarget
from cluster.spec import RevisionKey

log = logging.getLogger("zeroserve.kubernetes")

T = TypeVar("T")

SYSTEM_NAMESPACE = "zeroserve-system"
LEASE_NAME = "zeroserve-autoscaler"
ACTIVATOR_SERVICE = "activator"
CONFIG_AUTOSCALER = "config-autoscaler"


def system_namespace() -> str:
    """``SYSTEM_NAMESPACE`` (set from the pod's namespace in deploy/), else zeroserve-system."""
    return os.environ.get("SYSTEM_NAMESPACE") or SYSTEM_NAMESPACE


class KubeWiring:
    """The cluster ports of one component over one :class:`KubeApi`."""

    def __init__(self, api: KubeApi, *, namespace: str | None = None) -> None:
        self.api = api
        self.namespace = namespace
        """Where revisions and routes are watched; None: every namespace."""
        self._informers: dict[tuple[Resource, str | None, str, str], Informer] = {}
        self._made: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, *, namespace: str | None = None
    ) -> KubeWiring:
        return cls(await AioKubeApi.connect(kubeconfig), namespace=namespace)

    def informer(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> Informer:
        key = (resource, namespace, label_selector, field_selector)
        if key not in self._informers:
            self._informers[key] = Informer(
                self.api,
                resource,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
            )
        return self._informers[key]

    def _once(self, name: str, make: Callable[[], T]) -> T:
        if name not in self._made:
            self._made[name] = make()
        value: T = self._made[name]
        return value

    def deployments(self) -> Informer:
        return self.informer(DEPLOYMENTS, self.namespace, label_selector=REVISION_LABEL)

    def revisions(self) -> KubeRevisions:
        return self._once("revisions", lambda: KubeRevisions(self.deployments()))

    def routes(self) -> KubeRoutes:
        return self._once(
            "routes",
            lambda: KubeRoutes(
                self.revisions(),
                self.informer(CONFIGMAPS, self.namespace, label_selector=ROUTE_LABEL),
            ),
        )

    def endpoints(self) -> KubeEndpoints:
        return self._once(
            "endpoints",
            lambda: KubeEndpoints(
                self.informer(ENDPOINTSLICES, self.namespace, label_selector=REVISION_LABEL)
            ),
        )

    def scale_target(self) -> KubeScaleTarget:
        return self._once("scale", lambda: KubeScaleTarget(self.api, self.deployments()))

    def config(self, namespace: str, name: str = CONFIG_AUTOSCALER) -> KubeConfig:
        informer = self.informer(CONFIGMAPS, namespace, field_selector=f"metadata.name={name}")
        return self._once(
            f"config/{namespace}/{name}", lambda: KubeConfig(informer, namespace, name)
        )

    def activator_peers(
        self,
        namespace: str,
        own_ip: str,
        make: Callable[[int, int], T],
        service: str = ACTIVATOR_SERVICE,
    ) -> KubeActivatorPeers[T]:
        informer = self.informer(
            ENDPOINTSLICES, namespace, label_selector=f"kubernetes.io/service-name={service}"
        )
        return self._once("peers", lambda: KubeActivatorPeers(informer, own_ip, make))

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start every informer made so far and wait for their first lists."""
        for informer in self._informers.values():
            informer.start()
        async with asyncio.timeout(timeout_s):
            for informer in self._informers.values():
                await informer.wait_synced()

    def spawn(self, coro: Any, name: str) -> None:
        """Run a background loop (the leader elector) until :meth:`close`."""
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for informer in self._informers.values():
            await informer.stop()
        close = getattr(self.api, "close", None)
        if close is not None:
            await close()


class ReadableScaleTarget(ScaleTarget, Protocol):
    """A scale target that can also say what it is asked for now (``KubeScaleTarget``)."""

    async def current_scale(self, key: RevisionKey) -> int | None: ...


class LeaderScaleTarget:
    """A scale target that only acts while this replica leads (the Lease holder).

    Every replica runs the autoscaler, but only the leader gets the activators' stats, so a
    standby's windows say little. It is also the multiscaler's ``Leadership``: ``term`` tells it
    when this replica starts leading, and it then starts every revision afresh from
    ``current_scale`` (the Deployment's ``spec.replicas``) in start-up panic (docs/autoscaler.md,
    "Takeover"); a standby decides and records nothing.
    """

    def __init__(self, inner: ReadableScaleTarget, elector: LeaderElector) -> None:
        self._inner = inner
        self._elector = elector

    @property
    def term(self) -> int | None:
        """None while a standby; while leading, the elector's term count."""
        return self._elector.terms if self._elector.is_leader else None

    async def current_scale(self, key: RevisionKey) -> int | None:
        return await self._inner.current_scale(key)

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        if self._elector.is_leader:
            await self._inner.set_scale(key, replicas)

    async def ready_pods(self, key: RevisionKey) -> int | None:
        return await self._inner.ready_pods(key)

    async def initialized(self, key: RevisionKey) -> bool:
        return await self._inner.initialized(key)

    async def mark_initialized(self, key: RevisionKey) -> None:
        if self._elector.is_leader:
            await self._inner.mark_initialized(key)


def autoscaler_elector(
    wiring: KubeWiring,
    namespace: str,
    pod: str,
    *,
    on_stopped_leading: Callable[[], None] | None = None,
) -> LeaderElector:
    """The autoscaler's elector: Lease ``zeroserve-autoscaler``; the leader labels its pod.

    ``on_stopped_leading`` runs after the label is being removed: the autoscaler closes its
    activators' stat sockets there, so they reconnect through the Service to the new leader.
    """

    def stopped() -> None:
        label(False)
        if on_stopped_leading is not None:
            on_stopped_leading()

    def label(leading: bool) -> None:
        async def patch() -> None:
            try:
                await mark_leader_pod(wiring.api, namespace, pod, leading)
            except Exception as exc:  # the label only steers stats; leading goes on
                log.warning("cannot label the pod", extra={"pod": pod, "error": str(exc)})

        wiring.spawn(patch(), f"leader-label-{leading}")

    return LeaderElector(
        wiring.api,
        namespace,
        LEASE_NAME,
        pod,
        on_started_leading=lambda: label(True),
        on_stopped_leading=stopped,
    )

"""The cluster ports over informers: revisions, routes, endpoints, config, peers, scale target.

Each source rebuilds its snapshot from its informer's cache after every batch of changes and
publishes it only when it differs, so listeners see each real change once. Invalid objects are
logged with the error that names the field; a revision or route that becomes invalid keeps its
last valid version (a typo in ``kubectl edit`` does not take a model down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Generic, TypeVar

from cluster.kubernetes.api import DEPLOYMENTS, KubeApi, Obj
from cluster.kubernetes.informer import Change, Informer, ObjKey, resource_version
from cluster.kubernetes.scheme import (
    REVISION_LABEL,
    MisplacedAnnotation,
    SchemeError,
    misplaced_annotations,
    revision_from_deployment,
    route_from_configmap,
)
from cluster.memory import Observable
from cluster.ports import PodEndpoint
from cluster.spec import Revision, RevisionKey, Service, ShadowTarget, TrafficTarget

log = logging.getLogger("zeroserve.kubernetes")

T = TypeVar("T")

QUEUE_PORT_NAMES = ("http", "http2")
"""The EndpointSlice port names of the queue-proxy's serving port (Knative's)."""
STATS_PORT_NAME = "http-stats"
STATS_PORT_DEFAULT = 9090


class _Derived(Observable[T]):
    """An observable recomputed from informers; publishes only real changes."""

    def __init__(self, initial: T, informers: Sequence[Informer]) -> None:
        super().__init__(initial)
        for informer in informers:
            informer.add_handler(self._changed)

    def _changed(self, _changes: Sequence[Change]) -> None:
        value = self.compute()
        if value != self.current():
            self.set(value)

    def compute(self) -> T:
        raise NotImplementedError

    def refresh(self) -> None:
        self._changed(())


class KubeRevisions(_Derived[Mapping[RevisionKey, Revision]]):
    """RevisionSource: the Deployments labelled ``serving.knative.dev/revision``."""

    def __init__(self, deployments: Informer) -> None:
        self._deployments = deployments
        self._valid: dict[ObjKey, tuple[str, Revision]] = {}
        self._reported: set[tuple[ObjKey, str]] = set()
        self._misplaced: dict[ObjKey, tuple[MisplacedAnnotation, ...]] = {}
        self.created: dict[RevisionKey, str] = {}
        """creationTimestamp of each revision (RFC 3339 sorts as text), for the default route."""
        super().__init__(MappingProxyType({}), [deployments])

    def compute(self) -> Mapping[RevisionKey, Revision]:
        out: dict[RevisionKey, Revision] = {}
        live = self._deployments.items()
        for key in list(self._valid):
            if key not in live:
                del self._valid[key]
        for key in list(self._misplaced):
            if key not in live:
                del self._misplaced[key]
        for key, obj in live.items():
            rv = resource_version(obj)
            cached = self._valid.get(key)
            if cached is None or cached[0] != rv:
                self._warn_misplaced(key, obj)
                try:
                    self._valid[key] = (rv, revision_from_deployment(obj))
                except SchemeError as exc:
                    if (key, rv) not in self._reported:
                        self._reported.add((key, rv))
                        log.error(
                            "invalid revision Deployment",
                            extra={"namespace": key[0], "revision": key[1], "error": str(exc)},
                        )
            if key in self._valid:
                rev = self._valid[key][1]
                out[rev.key] = rev
                created = str((obj.get("metadata") or {}).get("creationTimestamp", ""))
                self.created[rev.key] = created
        return MappingProxyType(out)

    def _warn_misplaced(self, key: ObjKey, obj: Obj) -> None:
        """One warning per annotation the pod template has and the Deployment lacks (or sets
        otherwise), when it first appears: not again at each status update of the Deployment."""
        found = misplaced_annotations(obj)
        seen = self._misplaced.get(key, ())
        self._misplaced[key] = found
        for m in found:
            if m in seen:
                continue
            where = {"namespace": key[0], "revision": key[1], "annotation": m.key}
            if m.deployment_value is None:
                log.warning(
                    "autoscaling annotation found only on the pod template",
                    extra={
                        **where,
                        "value": m.template_value,
                        "hint": "used; zeroserve reads metadata.annotations first, move it there",
                    },
                )
            else:
                log.warning(
                    "autoscaling annotation differs on the pod template",
                    extra={
                        **where,
                        "value": m.deployment_value,
                        "template_value": m.template_value,
                        "hint": "the Deployment's metadata.annotations value is used",
                    },
                )


class KubeRoutes(_Derived[Mapping[tuple[str, str], Service]]):
    """RouteSource: services from the revisions, traffic from the route ConfigMaps."""

    def __init__(self, revisions: KubeRevisions, routes: Informer) -> None:
        self._revisions = revisions
        self._routes = routes
        self._valid: dict[
            ObjKey, tuple[str, str, tuple[TrafficTarget, ...], tuple[ShadowTarget, ...]]
        ] = {}
        super().__init__(MappingProxyType({}), [routes])
        revisions.subscribe(lambda _: self.refresh())

    def compute(self) -> Mapping[tuple[str, str], Service]:
        traffic: dict[tuple[str, str], tuple[TrafficTarget, ...]] = {}
        shadows: dict[tuple[str, str], tuple[ShadowTarget, ...]] = {}
        live = self._routes.items()
        for key in list(self._valid):
            if key not in live:
                del self._valid[key]
        for key, obj in live.items():
            rv = resource_version(obj)
            if key not in self._valid or self._valid[key][0] != rv:
                try:
                    service, targets, copies = route_from_configmap(obj)
                    self._valid[key] = (rv, service, targets, copies)
                except SchemeError as exc:
                    log.error(
                        "invalid route ConfigMap",
                        extra={"namespace": key[0], "configmap": key[1], "error": str(exc)},
                    )
            if key in self._valid:
                _, service, targets, copies = self._valid[key]
                traffic[(key[0], service)] = targets
                shadows[(key[0], service)] = copies
        by_service: dict[tuple[str, str], list[Revision]] = {}
        for rev in self._revisions.current().values():
            by_service.setdefault((rev.namespace, rev.service), []).append(rev)
        out: dict[tuple[str, str], Service] = {}
        for (namespace, name), revs in by_service.items():
            revs.sort(key=lambda r: (self._revisions.created.get(r.key, ""), r.name))
            targets = traffic.get((namespace, name)) or (
                TrafficTarget(revision=revs[-1].name, percent=100),
            )
            out[(namespace, name)] = Service(
                namespace=namespace,
                name=name,
                revisions=tuple(revs),
                traffic=targets,
                shadows=shadows.get((namespace, name), ()),
            )
        return MappingProxyType(out)


def _ready_addresses(
    slice_: Mapping[str, object], port_names: Sequence[str]
) -> list[tuple[str, str, int]]:
    """(pod name, ip, port) of the ready endpoints of one EndpointSlice for the named port."""
    ports = [p for p in slice_.get("ports") or [] if isinstance(p, dict)]  # type: ignore[attr-defined]
    port = next((p.get("port") for p in ports if p.get("name") in port_names), None)
    if not isinstance(port, int):
        return []
    out: list[tuple[str, str, int]] = []
    for ep in slice_.get("endpoints") or []:  # type: ignore[attr-defined]
        if not isinstance(ep, dict):
            continue
        # conditions.ready: nil means ready (discovery.k8s.io/v1 semantics)
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        name = str((ep.get("targetRef") or {}).get("name", ""))
        for ip in ep.get("addresses") or []:
            out.append((name or str(ip), str(ip), port))
    return out


def _host(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class KubeEndpoints(_Derived[Mapping[RevisionKey, Sequence[PodEndpoint]]]):
    """EndpointSource: the ready queue-proxy addresses in the EndpointSlices of each revision
    (slices labelled ``serving.knative.dev/revision``, copied from the revision's Service)."""

    def __init__(self, slices: Informer) -> None:
        self._slices = slices
        super().__init__(MappingProxyType({}), [slices])

    def compute(self) -> Mapping[RevisionKey, Sequence[PodEndpoint]]:
        pods: dict[RevisionKey, dict[str, PodEndpoint]] = {}
        for (namespace, _), obj in self._slices.items().items():
            revision = ((obj.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)
            if not revision:
                continue
            stats = {ip: port for _, ip, port in _ready_addresses(obj, (STATS_PORT_NAME,))}
            for name, ip, port in _ready_addresses(obj, QUEUE_PORT_NAMES):
                address = _host(ip, port)
                pods.setdefault(RevisionKey(namespace, revision), {})[address] = PodEndpoint(
                    name=name,
                    address=address,
                    stats_address=_host(ip, stats.get(ip, STATS_PORT_DEFAULT)),
                )
        return MappingProxyType(
            {key: tuple(sorted(p.values(), key=lambda e: e.address)) for key, p in pods.items()}
        )


class KubeConfig(_Derived[Mapping[str, str]]):
    """ConfigSource: one ConfigMap's data (empty while it does not exist)."""

    def __init__(self, configmaps: Informer, namespace: str, name: str) -> None:
        self._configmaps = configmaps
        self._key = (namespace, name)
        super().__init__(MappingProxyType({}), [configmaps])

    def compute(self) -> Mapping[str, str]:
        obj = self._configmaps.items().get(self._key) or {}
        return MappingProxyType({str(k): str(v) for k, v in (obj.get("data") or {}).items()})


class KubeActivatorPeers(_Derived[T], Generic[T]):
    """ActivatorPeers: the activator count and this activator's index (reference §4.3).

    The ready IPs of the activator Service's EndpointSlices, sorted as text; the index is the
    position of ``own_ip`` (-1 if absent: use every pod). ``make(count, index)`` builds the
    value (the activator passes its ``PeerInfo``; ``cluster`` cannot import it).
    """

    def __init__(self, slices: Informer, own_ip: str, make: Callable[[int, int], T]) -> None:
        self._slices = slices
        self._own_ip = own_ip
        self._make = make
        super().__init__(make(1, -1), [slices])

    def compute(self) -> T:
        ips = sorted(
            {
                ip
                for obj in self._slices.items().values()
                for _, ip, _ in _ready_addresses(obj, QUEUE_PORT_NAMES)
            }
        )
        index = ips.index(self._own_ip) if self._own_ip in ips else -1
        return self._make(max(1, len(ips)), index)


INITIALIZED_ANNOTATION = "autoscaling.zeroserve.dev/initialized"


class KubeScaleTarget:
    """ScaleTarget: the ``scale`` subresource of the revision's Deployment (named as it)."""

    def __init__(self, api: KubeApi, deployments: Informer) -> None:
        self._api = api
        self._deployments = deployments

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        obj = self._deployments.get(key.namespace, key.name)
        if obj is not None and (obj.get("spec") or {}).get("replicas", 1) == replicas:
            return  # Knative skips a patch that changes nothing
        # Knative's patch: [{"op": "add", "path": "/spec/replicas", "value": N}]
        await self._api.patch(
            DEPLOYMENTS,
            key.namespace,
            key.name,
            [{"op": "add", "path": "/spec/replicas", "value": replicas}],
            patch_type="json",
            subresource="scale",
        )
        log.info("scaled", extra={"revision": str(key), "desired_pods": replicas})

    async def current_scale(self, key: RevisionKey) -> int | None:
        """The Deployment's ``spec.replicas`` (1 when unset, as Kubernetes defaults it); None
        when the Deployment is unknown."""
        obj = self._deployments.get(key.namespace, key.name)
        if obj is None:
            return None
        replicas = (obj.get("spec") or {}).get("replicas", 1)
        return replicas if isinstance(replicas, int) else None

    async def ready_pods(self, key: RevisionKey) -> int | None:
        obj = self._deployments.get(key.namespace, key.name)
        if obj is None:
            return 0
        status = obj.get("status") or {}
        ready = status.get("readyReplicas", 0)
        return ready if isinstance(ready, int) else None

    async def initialized(self, key: RevisionKey) -> bool:
        """The Deployment carries ``INITIALIZED_ANNOTATION: "true"`` (Knative keeps this in the
        PodAutoscaler's status; zeroserve has no PodAutoscaler, so the Deployment holds it)."""
        obj = self._deployments.get(key.namespace, key.name)
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        return annotations.get(INITIALIZED_ANNOTATION) == "true"

    async def mark_initialized(self, key: RevisionKey) -> None:
        if await self.initialized(key) or self._deployments.get(key.namespace, key.name) is None:
            return
        patch = {"metadata": {"annotations": {INITIALIZED_ANNOTATION: "true"}}}
        await self._api.patch(DEPLOYMENTS, key.namespace, key.name, patch, patch_type="merge")
        log.info("revision initialized", extra={"revision": str(key)})

"""cluster/kubernetes and deploy/ against a real control plane (etcd, kube-apiserver,
kube-controller-manager from tests/k8s/build-control-plane.sh) on loopback.

Not in the default test run (the build takes long on a fresh machine); run it with
``tests/k8s/run-real.sh``, which builds the binaries once and then runs this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from autoscaler.engine import Autoscaler, build_autoscaler
from cluster.kubernetes.adapters import KubeConfig, KubeEndpoints, KubeScaleTarget
from cluster.kubernetes.api import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    AioKubeApi,
    ApiError,
    ConflictError,
    GoneError,
    NotFoundError,
    Resource,
)
from cluster.kubernetes.informer import Change, Informer
from cluster.kubernetes.leader import LeaderElector
from cluster.kubernetes.podstarts import PodStarts
from cluster.kubernetes.runtime import LEASE_NAME, KubeWiring, LeaderScaleTarget
from cluster.kubernetes.scheme import REVISION_LABEL
from cluster.memory import MemoryConfig
from cluster.spec import RevisionKey
from metrics.clock import LoopClock
from metrics.stat import Stat, WireStat
from tests.k8s.controlplane import ControlPlane, NodeAgent, built, control_plane
from tests.test_kubernetes_deploy import DEPLOY, render

NS = "zeroserve-system"
NAMESPACES = Resource("", "v1", "namespaces")
RESOURCES = {
    "Namespace": (Resource("", "v1", "namespaces"), False),
    "ServiceAccount": (Resource("", "v1", "serviceaccounts"), True),
    "ConfigMap": (CONFIGMAPS, True),
    "Service": (Resource("", "v1", "services"), True),
    "Deployment": (DEPLOYMENTS, True),
    "PodDisruptionBudget": (Resource("policy", "v1", "poddisruptionbudgets"), True),
    "ClusterRole": (Resource("rbac.authorization.k8s.io", "v1", "clusterroles"), False),
    "ClusterRoleBinding": (
        Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings"),
        False,
    ),
    "Role": (Resource("rbac.authorization.k8s.io", "v1", "roles"), True),
    "RoleBinding": (Resource("rbac.authorization.k8s.io", "v1", "rolebindings"), True),
}


@pytest.fixture(scope="session")
def plane() -> Iterator[ControlPlane]:
    assert built(), "run tests/k8s/build-control-plane.sh first (tests/k8s/run-real.sh does)"
    with control_plane() as cp:
        yield cp


@pytest.fixture
async def admin(plane: ControlPlane) -> AsyncIterator[AioKubeApi]:
    api = plane.api()
    yield api
    await api.close()


async def eventually(check: Callable[[], Any], timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def apply_all(api: AioKubeApi, docs: list[dict[str, Any]], *, dry_run: bool) -> None:
    for doc in sorted(docs, key=lambda d: d["kind"] != "Namespace"):
        resource, namespaced = RESOURCES[doc["kind"]]
        ns = doc["metadata"].get("namespace", "default") if namespaced else ""
        await api.patch(
            resource, ns, doc["metadata"]["name"], doc, patch_type="apply", dry_run=dry_run
        )


async def test_deploy_applies_server_side(admin: AioKubeApi) -> None:
    base = render(DEPLOY)
    example = render(DEPLOY / "examples" / "iris")
    ns_doc = [d for d in base if d["kind"] == "Namespace"]
    await apply_all(admin, ns_doc, dry_run=False)  # dry runs need the namespace to exist
    await apply_all(admin, base + example, dry_run=True)
    await apply_all(admin, base + example, dry_run=False)
    got = await admin.get(DEPLOYMENTS, NS, "activator")
    assert got["spec"]["replicas"] == 2


async def test_scale_fills_endpoint_slices(admin: AioKubeApi) -> None:
    await apply_all(admin, render(DEPLOY / "examples" / "iris"), dry_run=False)
    agent = NodeAgent(admin)
    agent_task = asyncio.create_task(agent.run())
    deployments = Informer(admin, DEPLOYMENTS, "default", label_selector=REVISION_LABEL)
    slices = Informer(admin, ENDPOINTSLICES, "default", label_selector=REVISION_LABEL)
    endpoints = KubeEndpoints(slices)
    scale = KubeScaleTarget(admin, deployments)
    key = RevisionKey("default", "iris-00001")
    try:
        deployments.start()
        slices.start()
        await deployments.wait_synced()
        await scale.set_scale(key, 2)
        await eventually(lambda: len(endpoints.current().get(key, ())) == 2)

        # The ReplicaSet and Deployment controllers count ready pods one sync at a time, and
        # the slices can show both pods before the Deployment's status does: wait for 2.
        async def two_ready() -> bool:
            return await scale.ready_pods(key) == 2

        await eventually(two_ready, 60)
        await scale.set_scale(key, 0)
        await eventually(lambda: not endpoints.current().get(key))
    finally:
        agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent_task
        await deployments.stop()
        await slices.stop()


async def scale(api: AioKubeApi, key: RevisionKey, replicas: int) -> None:
    body = {"spec": {"replicas": replicas}}
    await api.patch(DEPLOYMENTS, key.namespace, key.name, body, subresource="scale")


async def test_a_cold_starts_steps_are_read_from_its_pod(
    plane: ControlPlane, admin: AioKubeApi
) -> None:
    """The activator's cold_start span on Kubernetes: when a pod of a revision someone waits
    for becomes ready, its start's steps are read from the pod, as the activator's own
    ServiceAccount (RBAC: pods get)."""
    await apply_all(admin, render(DEPLOY) + render(DEPLOY / "examples" / "iris"), dry_run=False)
    agent = NodeAgent(admin)
    agent_task = asyncio.create_task(agent.run())
    activator = KubeWiring(plane.api(impersonate=f"system:serviceaccount:{NS}:activator"))
    key = RevisionKey("default", "iris-00001")
    got: list[tuple[str, str, list[str], list[dict[str, Any]], float]] = []
    waiting = {(key.namespace, key.name)}
    try:
        endpoints = activator.endpoints()
        await activator.start(timeout_s=20)
        starts = PodStarts(
            activator.api,
            endpoints,
            wanted=lambda ns, rev: (ns, rev) in waiting,
            started=lambda ns, rev, events, end: got.append(
                (ns, rev, [e[0] for e in events], [e[2] for e in events], end)
            ),
        )
        await scale(admin, key, 0)
        await eventually(lambda: not endpoints.current().get(key))
        before = time.time()
        await scale(admin, key, 1)
        await eventually(lambda: bool(got), 60)
        starts.close()
    finally:
        agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent_task
        await activator.close()
    ns, rev, names, attrs, end = got[0]
    assert (ns, rev) == ("default", "iris-00001")
    # what the node agent records (a real kubelet adds sandbox_ready and container_started)
    assert names == [
        "pod_created",
        "scheduled",
        "initialized",
        "containers_ready",
        "ready",
        "endpoint_ready",
    ], names
    assert attrs[-1]["k8s.pod.name"].startswith("iris-00001-")
    assert before - 1 <= end <= time.time()


async def test_configmap_watch_and_410_after_compaction(admin: AioKubeApi) -> None:
    cms = Informer(admin, CONFIGMAPS, NS, label_selector="zs-test=gone")
    config = KubeConfig(cms, NS, "zs-test-config")
    changes: list[tuple[str, str]] = []
    cms.add_handler(lambda batch: changes.extend((c.type, c.key[1]) for c in batch))
    labels = {"zs-test": "gone"}
    for name in ("zs-test-config", "zs-test-other"):
        body = {"metadata": {"name": name, "labels": labels}, "data": {"a": "1"}}
        await admin.create(CONFIGMAPS, NS, body)
    cms.start()
    try:
        await cms.wait_synced()
        assert config.current() == {"a": "1"}
        await admin.patch(CONFIGMAPS, NS, "zs-test-config", {"data": {"a": "2"}})
        await eventually(lambda: config.current() == {"a": "2"})
        await cms.stop()
        stale = cms.resource_version
        # While it is away: a change, a delete, an add; then the API server compacts etcd
        # (--etcd-compaction-interval=2s) past its version.
        await admin.patch(CONFIGMAPS, NS, "zs-test-config", {"data": {"a": "3"}})
        await admin.delete(CONFIGMAPS, NS, "zs-test-other")
        body = {"metadata": {"name": "zs-test-new", "labels": labels}, "data": {}}
        await admin.create(CONFIGMAPS, NS, body)
        for n in range(3):
            await admin.patch(CONFIGMAPS, NS, "zs-test-new", {"data": {"n": str(n)}})
        await asyncio.sleep(5)
        with pytest.raises(GoneError):
            async for _ in admin.watch(CONFIGMAPS, NS, resource_version=stale, timeout_s=2):
                pass
        lists = cms.lists
        del changes[:]
        cms.start(resume=True)
        await eventually(lambda: cms.lists == lists + 1 and len(changes) == 3, 20)
        assert sorted(changes) == [
            ("added", "zs-test-new"),
            ("deleted", "zs-test-other"),
            ("modified", "zs-test-config"),
        ]
        assert config.current() == {"a": "3"}
    finally:
        await cms.stop()


FAILOVER_NS = "zs-failover"
BUSY = RevisionKey(FAILOVER_NS, "busy-00001")
BUSY_READY = 5
BUSY_CONC = 35.0  # at target 7 (CC 10 x 0.7): 5 pods is right all along
FAILOVER_WINDOW_S = 12  # stable window: short, so the test runs in well under a minute


def busy_deployment() -> dict[str, Any]:
    labels = {"serving.knative.dev/service": "busy", REVISION_LABEL: BUSY.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": BUSY.name,
            "labels": labels,
            "annotations": {"serving.knative.dev/container-concurrency": "10"},
        },
        "spec": {
            "replicas": BUSY_READY,
            "selector": {"matchLabels": {REVISION_LABEL: BUSY.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "model", "image": "zeroserve-test:none"}]},
            },
        },
    }


@dataclass
class AutoscalerReplica:
    """One autoscaler pod's parts, as ``python -m autoscaler --kubernetes`` wires them."""

    wiring: KubeWiring
    elector: LeaderElector
    autoscaler: Autoscaler
    alive: bool = True

    @classmethod
    async def start(cls, plane: ControlPlane, name: str) -> AutoscalerReplica:
        wiring = KubeWiring(plane.api(), namespace=FAILOVER_NS)
        elector = LeaderElector(
            wiring.api,
            FAILOVER_NS,
            "zs-failover-lease",
            name,
            lease_duration_s=2,
            renew_deadline_s=1.5,
            retry_period_s=0.2,
        )
        autoscaler = build_autoscaler(
            wiring.revisions(),
            wiring.endpoints(),
            LeaderScaleTarget(wiring.scale_target(), elector),
            MemoryConfig({"stable-window": f"{FAILOVER_WINDOW_S}s"}),
        )
        await wiring.start(timeout_s=20)
        wiring.spawn(elector.run(), f"elector-{name}")
        await autoscaler.start()
        return cls(wiring, elector, autoscaler)

    async def stop(self) -> None:
        """The pod goes away: its loops stop, and the elector releases the Lease."""
        self.alive = False
        await self.autoscaler.close()
        await self.wiring.close()


async def feed_stats(replicas: list[AutoscalerReplica]) -> None:
    """Load through the activator, one stat per second of wall time (each second once):

    every live replica records the queue-proxies' scraped stat, which is all proxied (the
    activator is always in the path), and the leader alone gets the activator's stat (the
    activators' sockets follow the leader). A second without a leader loses its activator stat,
    as it does when activators reconnect.
    """
    clock = LoopClock()
    last = int(clock.wall())
    while True:
        second = int(clock.wall())
        for s in range(last + 1, second + 1):
            scraped = Stat(
                pod_name="scraped",
                average_concurrent_requests=BUSY_CONC,
                average_proxied_concurrent_requests=BUSY_CONC,
                request_count=BUSY_CONC,
                proxied_request_count=BUSY_CONC,
                timestamp=s,
            )
            live = [r for r in replicas if r.alive]
            for r in live:
                r.autoscaler.collector.record(BUSY, scraped, float(s))
            leader = next((r for r in live if r.elector.is_leader), None)
            if leader is not None:
                stat = Stat(
                    pod_name="activator-0",
                    average_concurrent_requests=BUSY_CONC,
                    request_count=BUSY_CONC,
                    timestamp=s,
                )
                leader.autoscaler.record_stats(
                    [WireStat(namespace=BUSY.namespace, revision=BUSY.name, stat=stat)]
                )
        last = second
        await asyncio.sleep(0.1)


async def under_load(feeder: asyncio.Task[None], seconds: float) -> None:
    """Let the load run for ``seconds`` (the scenario's time, nothing to wait for), checking
    that the stats keep flowing."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert not feeder.done(), feeder
        await asyncio.sleep(0.2)


async def test_leader_fails_over(plane: ControlPlane, admin: AioKubeApi) -> None:
    """Two autoscaler replicas over a busy revision; the leader goes away under load.

    The standby takes the Lease, and while load keeps flowing through the takeover no patch of
    the Deployment's scale goes below its ready count (issue 19: a new leader used to patch 5 → 3
    a few seconds after taking over, from a standby's windows that held ~0).
    """
    with contextlib.suppress(ConflictError):
        await admin.create(NAMESPACES, "", {"metadata": {"name": FAILOVER_NS}})
    with contextlib.suppress(ConflictError):
        await admin.create(DEPLOYMENTS, FAILOVER_NS, busy_deployment())
    # Every change of the Deployment, as (spec.replicas, status.readyReplicas).
    seen: list[tuple[int, int]] = []
    watch = Informer(admin, DEPLOYMENTS, FAILOVER_NS, label_selector=REVISION_LABEL)

    def record(changes: Sequence[Change]) -> None:
        for change in changes:
            obj = change.object
            seen.append(
                (
                    int(obj["spec"].get("replicas", 1)),
                    int((obj.get("status") or {}).get("readyReplicas") or 0),
                )
            )

    watch.add_handler(record)
    agent = asyncio.create_task(NodeAgent(admin).run())
    replicas: list[AutoscalerReplica] = []
    feeder: asyncio.Task[None] | None = None
    mark = 0
    try:
        watch.start()
        await watch.wait_synced()
        await eventually(lambda: seen and seen[-1] == (BUSY_READY, BUSY_READY), 60)
        replicas = [
            await AutoscalerReplica.start(plane, "autoscaler-a"),
            await AutoscalerReplica.start(plane, "autoscaler-b"),
        ]
        feeder = asyncio.create_task(feed_stats(replicas))
        await eventually(lambda: any(r.elector.is_leader for r in replicas), 10)
        # Let the standby live past its own start-up panic (a stable window), so its windows
        # hold only what a standby sees, then take the leader away.
        await under_load(feeder, FAILOVER_WINDOW_S + 8)
        leader = next(r for r in replicas if r.elector.is_leader)
        heir = next(r for r in replicas if r is not leader)
        # A standby has written nothing, so it shows nothing applied.
        assert [s.applied for s in heir.autoscaler.status()] == [None]
        mark = len(seen)
        await leader.stop()
        await eventually(lambda: heir.elector.is_leader, 10)
        # Two stable windows under the new leader: its start-up panic, then its own decisions.
        await under_load(feeder, 2 * FAILOVER_WINDOW_S + 4)
        [status] = heir.autoscaler.status()
        assert status.applied == BUSY_READY, status
        assert status.desired == BUSY_READY, status
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        for r in replicas:
            if r.alive:
                await r.stop()
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
        await watch.stop()
    below = [(spec, ready) for spec, ready in seen if spec < BUSY_READY]
    assert not below, f"scaled below the ready count ({BUSY_READY}): {seen[mark:]}"
    assert {spec for spec, _ in seen} == {BUSY_READY}, seen


@pytest.mark.parametrize(
    ("account", "allowed", "forbidden"),
    [
        pytest.param(
            "activator",
            [
                ("list", DEPLOYMENTS, None),
                ("list", ENDPOINTSLICES, None),
                ("list", CONFIGMAPS, None),
            ],
            [("scale", DEPLOYMENTS, "default"), ("get-config", CONFIGMAPS, NS)],
            id="activator",
        ),
        pytest.param(
            "autoscaler",
            [
                ("list", DEPLOYMENTS, None),
                ("scale", DEPLOYMENTS, "default"),
                ("get-config", CONFIGMAPS, NS),
            ],
            [("list", CONFIGMAPS, None), ("list", Resource("", "v1", "secrets"), NS)],
            id="autoscaler",
        ),
    ],
)
async def test_rbac_by_impersonation(
    plane: ControlPlane,
    admin: AioKubeApi,
    account: str,
    allowed: list[tuple[str, Resource, str | None]],
    forbidden: list[tuple[str, Resource, str | None]],
) -> None:
    await apply_all(admin, render(DEPLOY) + render(DEPLOY / "examples" / "iris"), dry_run=False)
    api = plane.api(impersonate=f"system:serviceaccount:{NS}:{account}")

    async def attempt(verb: str, resource: Resource, ns: str | None) -> None:
        if verb == "list":
            await api.list(resource, ns)
        elif verb == "scale":
            await api.patch(
                resource,
                ns or "default",
                "iris-00001",
                {"spec": {"replicas": 0}},
                subresource="scale",
            )
        elif verb == "get-config":
            await api.get(resource, ns or NS, "config-autoscaler")

    try:
        for verb, resource, ns in allowed:
            await attempt(verb, resource, ns)
        for verb, resource, ns in forbidden:
            with pytest.raises(ApiError) as info:
                await attempt(verb, resource, ns)
            assert info.value.status == 403, (verb, resource, info.value)
    finally:
        await api.close()


async def test_components_run_as_their_service_accounts(
    plane: ControlPlane, admin: AioKubeApi
) -> None:
    """Everything each component's wiring does succeeds under its own ServiceAccount."""
    await apply_all(admin, render(DEPLOY) + render(DEPLOY / "examples" / "iris"), dry_run=False)
    activator = KubeWiring(plane.api(impersonate=f"system:serviceaccount:{NS}:activator"))
    autoscaler = KubeWiring(plane.api(impersonate=f"system:serviceaccount:{NS}:autoscaler"))
    try:
        routes = activator.routes()
        activator.endpoints()
        activator.activator_peers(NS, "10.0.0.1", lambda c, i: (c, i))
        await activator.start(timeout_s=20)
        assert ("default", "iris") in routes.current()

        revisions = autoscaler.revisions()
        autoscaler.endpoints()
        config = autoscaler.config(NS)
        elector = LeaderElector(
            autoscaler.api, NS, LEASE_NAME, "autoscaler-test", retry_period_s=0.2
        )
        await autoscaler.start(timeout_s=20)
        assert RevisionKey("default", "iris-00001") in revisions.current()
        assert "_example" in config.current()
        autoscaler.spawn(elector.run(), "elector")
        await eventually(lambda: elector.is_leader, 10)
        await autoscaler.scale_target().set_scale(RevisionKey("default", "iris-00001"), 1)
    finally:
        await activator.close()
        await autoscaler.close()
    lease = await admin.get(Resource("coordination.k8s.io", "v1", "leases"), NS, LEASE_NAME)
    assert lease["spec"]["holderIdentity"] == ""  # released on close


async def test_rendered_manifests_pass_a_server_side_dry_run(
    plane: ControlPlane, admin: AioKubeApi
) -> None:
    """``zeroserve render``'s objects, created with ``dryRun=All`` and strict field validation
    through the kubernetes client: the API server accepts every one (an unknown or misplaced
    field fails strict validation), and refuses a broken Deployment (so the check can fail)."""
    from kubernetes.aio import client
    from kubernetes.aio.client.exceptions import ApiException

    from cluster.inferenceservice import translate
    from cluster.kubernetes.render import render
    from cluster.spec_loader import parse_spec
    from tests.k8s.controlplane import ADMIN_TOKEN
    from tests.test_render import ISVC, NATIVE, REPO
    from zeroserve.specfile import load_translated

    rendered: list[list[dict[str, Any]]] = []
    for path in [REPO / "examples" / "canary.yaml", *sorted(REPO.glob("examples/*isvc*.yaml"))]:
        spec, tr = load_translated(path)
        rendered.append(render(spec, image="zeroserve:test", kube=tr.kube if tr else None))
    tr = translate(ISVC)
    rendered.append(render(parse_spec(tr.spec), image="zeroserve:test", kube=tr.kube))
    rendered.append(render(parse_spec(NATIVE), image="zeroserve:test"))
    # Each file in a namespace of its own: two files may name the same service (route-iris), and
    # the other tests of this control plane keep real objects in theirs.
    objs: list[dict[str, Any]] = []
    for i, batch in enumerate(rendered):
        for obj in batch:
            obj["metadata"]["namespace"] = f"dry-run-{i}-{obj['metadata']['namespace']}"
        objs += batch
    assert {o["kind"] for o in objs} == {"Deployment", "Service", "ConfigMap"}
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    assert any("initContainers" in o["spec"]["template"]["spec"] for o in deployments)

    for ns in sorted({o["metadata"]["namespace"] for o in objs} - {"default"}):
        with contextlib.suppress(ConflictError):
            await admin.create(NAMESPACES, "", {"metadata": {"name": ns}})
    cfg = client.Configuration(host=plane.url)
    cfg.verify_ssl = False
    cfg.api_key = {"BearerToken": ADMIN_TOKEN}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    async with client.ApiClient(cfg) as api_client:
        apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        create: dict[str, Callable[..., Awaitable[Any]]] = {
            "Deployment": apps.create_namespaced_deployment,
            "Service": core.create_namespaced_service,
            "ConfigMap": core.create_namespaced_config_map,
        }

        async def dry_run(obj: dict[str, Any]) -> None:
            await create[obj["kind"]](
                obj["metadata"]["namespace"], obj, dry_run="All", field_validation="Strict"
            )

        for obj in objs:
            await dry_run(obj)
        broken = copy.deepcopy(deployments[0])
        broken["spec"]["selector"]["matchLabels"] = {REVISION_LABEL: "another"}
        with pytest.raises(ApiException) as info:
            await dry_run(broken)
        assert info.value.status == 422, info.value
        misspelt = copy.deepcopy(deployments[0])
        misspelt["spec"]["template"]["spec"]["initContainer"] = []
        # (the client's own models refuse it before sending: ask the server, through the port)
        meta = misspelt["metadata"]
        with pytest.raises(ApiError) as refused:
            await admin.patch(
                DEPLOYMENTS,
                meta["namespace"],
                meta["name"],
                misspelt,
                patch_type="apply",
                dry_run=True,
            )
        assert "initContainer" in refused.value.message, refused.value
    # a dry run persists nothing
    for obj in deployments:
        with pytest.raises(NotFoundError):
            await admin.get(DEPLOYMENTS, obj["metadata"]["namespace"], obj["metadata"]["name"])

"""cluster/kubernetes and deploy/ against a real control plane (etcd, kube-apiserver,
kube-controller-manager from tests/k8s/build-control-plane.sh) on loopback.

Not in the default test run (the build takes long on a fresh machine); run it with
``tests/k8s/run-real.sh``, which builds the binaries once and then runs this file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from cluster.kubernetes.adapters import KubeConfig, KubeEndpoints, KubeScaleTarget
from cluster.kubernetes.api import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    AioKubeApi,
    ApiError,
    GoneError,
    Resource,
)
from cluster.kubernetes.informer import Informer
from cluster.kubernetes.leader import LeaderElector
from cluster.kubernetes.runtime import LEASE_NAME, KubeWiring
from cluster.kubernetes.scheme import REVISION_LABEL
from cluster.spec import RevisionKey
from tests.k8s.controlplane import ControlPlane, NodeAgent, built, control_plane
from tests.test_kubernetes_deploy import DEPLOY, render

NS = "zeroserve-system"
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


async def test_leader_fails_over(plane: ControlPlane) -> None:
    apis = [plane.api(), plane.api()]
    electors = [
        LeaderElector(
            api,
            NS,
            "zs-test-lease",
            f"e{n}",
            lease_duration_s=2,
            renew_deadline_s=1.5,
            retry_period_s=0.2,
        )
        for n, api in enumerate(apis)
    ]
    tasks = [asyncio.create_task(e.run()) for e in electors]
    try:
        await eventually(lambda: any(e.is_leader for e in electors))
        leader = next(i for i, e in enumerate(electors) if e.is_leader)
        tasks[leader].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[leader]
        await eventually(lambda: electors[1 - leader].is_leader, 5)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for api in apis:
            await api.close()


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

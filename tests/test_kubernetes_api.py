"""cluster.kubernetes against an API server: informer, scale, endpoints, config, peers, leader.

The server is tests/k8s/fakeapi.py (real resourceVersion, watch, bookmark, 410, 409 and
scale-subresource semantics); the client is the official ``kubernetes.aio`` behind
:class:`cluster.kubernetes.api.AioKubeApi`, so these tests exercise the real HTTP path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from kubernetes.aio import client

from cluster.kubernetes.adapters import (
    INITIALIZED_ANNOTATION,
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
    LEASES,
    PODS,
    AioKubeApi,
    ConflictError,
    GoneError,
    KubeApi,
    Obj,
)
from cluster.kubernetes.informer import Backoff, Change, Informer
from cluster.kubernetes.leader import LEADER_LABEL, LeaderElector, mark_leader_pod
from cluster.ports import PodEndpoint
from cluster.spec import RevisionKey, TrafficTarget
from tests.k8s.fakeapi import FakeApiServer

FAST = Backoff(initial_s=0.01, max_s=0.05)


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval_s=0.05)
    await srv.start()
    yield srv
    srv.open.set()
    await srv.close()


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[AioKubeApi]:
    cfg = client.Configuration(host=server.url)
    cfg.api_key = {"BearerToken": "test-token"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    kube = AioKubeApi(client.ApiClient(cfg))
    yield kube
    await kube.close()


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(*informers: Informer) -> AsyncIterator[None]:
    for inf in informers:
        inf.start()
    try:
        for inf in informers:
            await asyncio.wait_for(inf.wait_synced(), 5)
        yield
    finally:
        for inf in informers:
            await inf.stop()


def deployment(
    name: str, service: str = "iris", replicas: int = 1, annotations: dict[str, str] | None = None
) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": {
                "serving.knative.dev/service": service,
                "serving.knative.dev/revision": name,
            },
            "annotations": annotations or {},
        },
        "spec": {"replicas": replicas, "template": {"spec": {"containers": []}}},
    }


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> Obj:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data}


def endpoint_slice(name: str, labels: dict[str, str], endpoints: Sequence[tuple[str, bool]]) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8012}, {"name": "http-stats", "port": 9090}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": f"pod-{ip}"},
            }
            for ip, ready in endpoints
        ],
    }


# -- the port itself --------------------------------------------------------------------------


async def test_api_verbs_and_errors(api: AioKubeApi) -> None:
    created = await api.create(CONFIGMAPS, "default", configmap("a", {"k": "1"}))
    rv = created["metadata"]["resourceVersion"]
    with pytest.raises(ConflictError):
        await api.create(CONFIGMAPS, "default", configmap("a", {}))
    created["data"] = {"k": "2"}
    await api.replace(CONFIGMAPS, "default", "a", created)
    stale = dict(created, metadata=dict(created["metadata"], resourceVersion=rv))
    with pytest.raises(ConflictError):  # optimistic concurrency
        await api.replace(CONFIGMAPS, "default", "a", stale)
    patched = await api.patch(CONFIGMAPS, "default", "a", {"data": {"j": "3"}})
    assert patched["data"] == {"k": "2", "j": "3"}
    listed = await api.list(CONFIGMAPS, "default", field_selector="metadata.name=a")
    assert [o["metadata"]["name"] for o in listed.items] == ["a"]
    assert listed.resource_version == patched["metadata"]["resourceVersion"]


async def test_watch_from_a_compacted_version_is_gone(
    api: AioKubeApi, server: FakeApiServer
) -> None:
    await api.create(CONFIGMAPS, "default", configmap("a", {}))
    await api.create(CONFIGMAPS, "default", configmap("b", {}))
    server.compact()
    with pytest.raises(GoneError):
        async for _ in api.watch(CONFIGMAPS, "default", resource_version="1"):
            pass


# -- informer ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def __call__(self, batch: Sequence[Change]) -> None:
        for c in batch:
            self.changes.append((c.type, c.key[1], c.object["metadata"]["resourceVersion"]))

    def kinds(self) -> list[tuple[str, str]]:
        return [(t, n) for t, n, _ in self.changes]


async def test_informer_sees_each_change_once(api: AioKubeApi, server: FakeApiServer) -> None:
    await api.create(DEPLOYMENTS, "default", deployment("a"))
    inf = Informer(api, DEPLOYMENTS, "default", label_selector="serving.knative.dev/revision")
    rec = Recorder()
    inf.add_handler(rec)
    async with running(inf):
        await api.create(DEPLOYMENTS, "default", deployment("b"))
        await api.patch(DEPLOYMENTS, "default", "a", {"spec": {"replicas": 3}})
        await server.delete("deployments", "default", "b")
        # not selected: no label
        await api.create(DEPLOYMENTS, "default", {"metadata": {"name": "other"}, "spec": {}})
        await eventually(lambda: len(rec.changes) == 4)
        await asyncio.sleep(0.2)  # bookmarks pass; nothing more may arrive
    assert rec.kinds() == [("added", "a"), ("added", "b"), ("modified", "a"), ("deleted", "b")]
    assert set(inf.items()) == {("default", "a")}
    assert inf.lists == 1


async def test_bookmarks_advance_the_resource_version(
    api: AioKubeApi, server: FakeApiServer
) -> None:
    inf = Informer(api, DEPLOYMENTS, "default")
    async with running(inf):
        for n in range(3):  # other kinds move the global version on
            await api.create(CONFIGMAPS, "default", configmap(f"c{n}", {}))
        await eventually(lambda: inf.resource_version == str(server.rv))


async def test_410_relists_and_applies_only_the_difference(
    api: AioKubeApi, server: FakeApiServer
) -> None:
    server.bookmarks = False  # so the informer's version falls behind the compaction
    for name in ("keep", "change", "remove"):
        await api.create(DEPLOYMENTS, "default", deployment(name))
    inf = Informer(api, DEPLOYMENTS, "default", backoff=FAST)
    rec = Recorder()
    inf.add_handler(rec)
    async with running(inf):
        await eventually(lambda: len(rec.changes) == 3)
        # The connection drops; while it is down, objects change and etcd compacts.
        server.open.clear()
        await server.drop_watches()
        await server.put("deployments", deployment("change", replicas=2))
        await server.put("deployments", deployment("change", replicas=3))
        await server.delete("deployments", "default", "remove")
        await server.put("deployments", deployment("new"))
        server.compact()
        server.open.set()
        await eventually(lambda: inf.lists == 2 and len(rec.changes) == 6)
        await server.put("deployments", deployment("after"))
        await eventually(lambda: len(rec.changes) == 7)
        await asyncio.sleep(0.1)
    assert rec.kinds()[3:] == [
        ("deleted", "remove"),
        ("modified", "change"),
        ("added", "new"),
        ("added", "after"),
    ]
    assert (
        rec.changes[4][2]
        == server.get("deployments", "default", "change")["metadata"][  # type: ignore[index]
            "resourceVersion"
        ]
    )
    assert set(inf.items()) == {("default", n) for n in ("keep", "change", "new", "after")}


async def test_informer_backs_off_and_recovers_from_errors(
    api: AioKubeApi, server: FakeApiServer
) -> None:
    await api.create(CONFIGMAPS, "default", configmap("a", {}))
    server.fail_next = [500, 503, 500]
    inf = Informer(api, CONFIGMAPS, "default", backoff=FAST)
    async with running(inf):
        assert set(inf.items()) == {("default", "a")}
    assert server.fail_next == []
    gets = [p for m, p in server.requests if m == "GET"]
    assert len(gets) >= 4


# -- adapters ---------------------------------------------------------------------------------


async def test_revisions_routes_and_scale(api: AioKubeApi, server: FakeApiServer) -> None:
    deployments = Informer(api, DEPLOYMENTS, None, label_selector="serving.knative.dev/revision")
    routes_inf = Informer(api, CONFIGMAPS, None, label_selector="serving.knative.dev/route")
    revisions = KubeRevisions(deployments)
    routes = KubeRoutes(revisions, routes_inf)
    scale = KubeScaleTarget(api, deployments)
    seen: list[int] = []
    revisions.subscribe(lambda revs: seen.append(len(revs)))
    await api.create(
        DEPLOYMENTS,
        "default",
        deployment("iris-1", annotations={"serving.knative.dev/container-concurrency": "2"}),
    )
    async with running(deployments, routes_inf):
        key = RevisionKey("default", "iris-1")
        assert revisions.current()[key].container_concurrency == 2
        # No route ConfigMap: the newest revision gets everything.
        svc = routes.current()[("default", "iris")]
        assert svc.traffic == (TrafficTarget(revision="iris-1", percent=100),)

        await api.create(DEPLOYMENTS, "default", deployment("iris-2"))
        await eventually(lambda: len(revisions.current()) == 2)
        await api.create(
            CONFIGMAPS,
            "default",
            configmap(
                "route-iris",
                {
                    "traffic": "- {revisionName: iris-1, percent: 90}\n"
                    "- {revisionName: iris-2, percent: 10, tag: canary}"
                },
                {"serving.knative.dev/route": "iris"},
            ),
        )
        await eventually(lambda: len(routes.current()[("default", "iris")].traffic) == 2)
        # An invalid edit keeps the last valid traffic.
        await api.patch(CONFIGMAPS, "default", "route-iris", {"data": {"traffic": "- x"}})
        await asyncio.sleep(0.2)
        assert routes.current()[("default", "iris")].traffic[1].tag == "canary"
        # An invalid revision edit keeps the last valid revision.
        await api.patch(
            DEPLOYMENTS,
            "default",
            "iris-1",
            {"metadata": {"annotations": {"serving.knative.dev/container-concurrency": "-1"}}},
        )
        await asyncio.sleep(0.2)
        assert revisions.current()[key].container_concurrency == 2

        # Scale through the subresource; ready pods from the status.
        await scale.set_scale(key, 3)
        assert server.get("deployments", "default", "iris-1")["spec"]["replicas"] == 3  # type: ignore[index]
        assert (
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/iris-1/scale",
        ) in server.requests
        assert await scale.ready_pods(key) == 0
        obj = server.get("deployments", "default", "iris-1")
        assert obj is not None
        await server.put("deployments", {**obj, "status": {"readyReplicas": 3}})
        await eventually(
            lambda: (
                (deployments.get("default", "iris-1") or {}).get("status") == {"readyReplicas": 3}
            )
        )
        assert await scale.ready_pods(key) == 3
        assert await scale.ready_pods(RevisionKey("default", "nope")) == 0
        patches = len(server.requests)
        await scale.set_scale(key, 3)  # unchanged: no request
        assert len(server.requests) == patches

        # The initial scale reached is remembered on the Deployment (for a restarted autoscaler).
        assert not await scale.initialized(key)
        await scale.mark_initialized(key)
        annotations = server.get("deployments", "default", "iris-1")["metadata"]["annotations"]  # type: ignore[index]
        assert annotations[INITIALIZED_ANNOTATION] == "true"
        assert annotations["serving.knative.dev/container-concurrency"] == "-1"  # merged, kept
        await eventually(
            lambda: (
                INITIALIZED_ANNOTATION
                in ((deployments.get("default", "iris-1") or {}).get("metadata") or {}).get(
                    "annotations", {}
                )
            )
        )
        assert await scale.initialized(key)
        patches = len(server.requests)
        await scale.mark_initialized(key)  # already marked: no request
        assert len(server.requests) == patches
        assert not await scale.initialized(RevisionKey("default", "nope"))
        await scale.mark_initialized(RevisionKey("default", "nope"))  # unknown: nothing to mark
        assert len(server.requests) == patches

        await server.delete("deployments", "default", "iris-2")
        await eventually(lambda: set(revisions.current()) == {key})
    assert seen == [1, 2, 1]


async def test_endpoints_from_endpoint_slices(api: AioKubeApi) -> None:
    slices = Informer(api, ENDPOINTSLICES, None, label_selector="serving.knative.dev/revision")
    endpoints = KubeEndpoints(slices)
    rev = {"serving.knative.dev/revision": "iris-1", "kubernetes.io/service-name": "iris-1"}
    await api.create(
        ENDPOINTSLICES,
        "default",
        endpoint_slice("iris-1-a", rev, [("10.0.0.2", True), ("10.0.0.3", False)]),
    )
    async with running(slices):
        key = RevisionKey("default", "iris-1")
        assert endpoints.current()[key] == (
            PodEndpoint(
                name="pod-10.0.0.2", address="10.0.0.2:8012", stats_address="10.0.0.2:9090"
            ),
        )
        await api.create(
            ENDPOINTSLICES, "default", endpoint_slice("iris-1-b", rev, [("10.0.0.1", True)])
        )
        await eventually(lambda: len(endpoints.current().get(key, ())) == 2)
        assert [p.address for p in endpoints.current()[key]] == ["10.0.0.1:8012", "10.0.0.2:8012"]
        await api.patch(
            ENDPOINTSLICES,
            "default",
            "iris-1-a",
            [{"op": "replace", "path": "/endpoints/0/conditions/ready", "value": False}],
            patch_type="json",
        )
        await eventually(lambda: len(endpoints.current().get(key, ())) == 1)


async def test_config_follows_the_configmap(api: AioKubeApi, server: FakeApiServer) -> None:
    cms = Informer(
        api, CONFIGMAPS, "zeroserve-system", field_selector="metadata.name=config-autoscaler"
    )
    config = KubeConfig(cms, "zeroserve-system", "config-autoscaler")
    seen: list[dict[str, str]] = []
    config.subscribe(lambda data: seen.append(dict(data)))
    await api.create(CONFIGMAPS, "zeroserve-system", configmap("other", {"x": "1"}))
    async with running(cms):
        assert config.current() == {}
        await api.create(
            CONFIGMAPS, "zeroserve-system", configmap("config-autoscaler", {"stable-window": "60s"})
        )
        await eventually(lambda: config.current() == {"stable-window": "60s"})
        await api.patch(
            CONFIGMAPS, "zeroserve-system", "config-autoscaler", {"data": {"stable-window": "30s"}}
        )
        await eventually(lambda: config.current() == {"stable-window": "30s"})
        await server.delete("configmaps", "zeroserve-system", "config-autoscaler")
        await eventually(lambda: config.current() == {})
    assert seen == [{"stable-window": "60s"}, {"stable-window": "30s"}, {}]


async def test_activator_peers_count_and_index(api: AioKubeApi) -> None:
    slices = Informer(
        api,
        ENDPOINTSLICES,
        "zeroserve-system",
        label_selector="kubernetes.io/service-name=activator",
    )
    peers = KubeActivatorPeers(slices, "10.0.0.2", lambda count, index: (count, index))
    labels = {"kubernetes.io/service-name": "activator"}
    await api.create(
        ENDPOINTSLICES,
        "zeroserve-system",
        endpoint_slice("activator-a", labels, [("10.0.0.9", True), ("10.0.0.2", True)]),
    )
    async with running(slices):
        assert peers.current() == (2, 0)  # "10.0.0.2" < "10.0.0.9" as text
        await api.create(
            ENDPOINTSLICES,
            "zeroserve-system",
            endpoint_slice("activator-b", labels, [("10.0.0.10", True)]),
        )
        await eventually(lambda: peers.current() == (3, 1))  # 10.0.0.10 < 10.0.0.2 < 10.0.0.9
        await api.patch(
            ENDPOINTSLICES,
            "zeroserve-system",
            "activator-a",
            [{"op": "replace", "path": "/endpoints/1/conditions/ready", "value": False}],
            patch_type="json",
        )
        await eventually(lambda: peers.current() == (2, -1))


# -- leader election --------------------------------------------------------------------------


class Unreachable:
    """A KubeApi whose connection can be cut (the leader's node is partitioned or dies)."""

    def __init__(self, inner: KubeApi) -> None:
        self.inner = inner
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.cut:
                raise ConnectionRefusedError("cut")
            return await attr(*args, **kwargs)

        return call


def elector(api: KubeApi, identity: str) -> LeaderElector:
    return LeaderElector(
        api,
        "zeroserve-system",
        "zeroserve-autoscaler",
        identity,
        lease_duration_s=1.0,
        renew_deadline_s=0.6,
        retry_period_s=0.05,
    )


async def _spawn(coro: Awaitable[None]) -> asyncio.Task[None]:
    async def run() -> None:
        await coro

    return asyncio.create_task(run())


async def test_leader_election_fails_over(api: AioKubeApi, server: FakeApiServer) -> None:
    a_api = Unreachable(api)
    a, b = elector(a_api, "a"), elector(api, "b")
    task_a = await _spawn(a.run())
    await eventually(lambda: a.is_leader)
    task_b = await _spawn(b.run())
    both: list[bool] = []

    async def sample() -> None:
        while True:
            both.append(a.is_leader and b.is_leader)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.sleep(0.3)
        assert a.is_leader
        assert not b.is_leader
        assert b.holder == "a"
        # a's node is cut off: it steps down at the renew deadline; b takes over after the lease.
        loop = asyncio.get_running_loop()
        start = loop.time()
        a_api.cut = True
        await eventually(lambda: b.is_leader, timeout_s=3)
        took = loop.time() - start
        assert not a.is_leader
        assert 0.6 < took < 1.0 + 0.3, took  # within the lease duration (plus a retry)
        lease = server.get("leases", "zeroserve-system", "zeroserve-autoscaler")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        # a comes back: it stays a standby.
        a_api.cut = False
        await asyncio.sleep(0.3)
        assert b.is_leader
        assert not a.is_leader
        # b stops cleanly: it releases the lease and a takes over at its next retry.
        start = loop.time()
        task_b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_b
        await eventually(lambda: a.is_leader, timeout_s=3)
        assert loop.time() - start < 0.5
    finally:
        sampler.cancel()
        task_a.cancel()
        task_b.cancel()
        for t in (sampler, task_a, task_b):
            with contextlib.suppress(asyncio.CancelledError):
                await t
    assert not any(both), "two leaders at once"


async def test_concurrent_candidates_elect_one(api: AioKubeApi) -> None:
    electors = [elector(api, f"c{n}") for n in range(4)]
    tasks = [await _spawn(e.run()) for e in electors]
    try:
        await eventually(lambda: any(e.is_leader for e in electors))
        await asyncio.sleep(0.3)
        assert sum(e.is_leader for e in electors) == 1
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_leader_labels_its_pod(api: AioKubeApi, server: FakeApiServer) -> None:
    await api.create(PODS, "zeroserve-system", {"metadata": {"name": "autoscaler-0"}, "spec": {}})
    await mark_leader_pod(api, "zeroserve-system", "autoscaler-0", True)
    pod = server.get("pods", "zeroserve-system", "autoscaler-0")
    assert pod is not None
    assert pod["metadata"]["labels"] == {LEADER_LABEL: "true"}
    await mark_leader_pod(api, "zeroserve-system", "autoscaler-0", False)
    pod = server.get("pods", "zeroserve-system", "autoscaler-0")
    assert pod is not None
    assert pod["metadata"]["labels"] == {}
    assert LEASES.plural == "leases"


async def test_resumed_informer_relists_on_410(api: AioKubeApi, server: FakeApiServer) -> None:
    server.bookmarks = False
    await api.create(CONFIGMAPS, "default", configmap("a", {}))
    inf = Informer(api, CONFIGMAPS, "default", backoff=FAST)
    rec = Recorder()
    inf.add_handler(rec)
    async with running(inf):
        pass
    await api.create(CONFIGMAPS, "default", configmap("b", {}))
    server.compact()
    inf.start(resume=True)
    try:
        await eventually(lambda: inf.lists == 2)
        await eventually(lambda: len(rec.changes) == 2)
    finally:
        await inf.stop()
    assert rec.kinds() == [("added", "a"), ("added", "b")]
    # The resumed watch asked from version 1 (compacted: 410), then it listed again.
    watches = [p for _, p in server.requests if "watch=true" in p]
    assert any("resourceVersion=1&" in p for p in watches)
    assert inf.lists == 2

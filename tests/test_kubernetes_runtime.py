"""cluster.kubernetes.runtime: what the composition roots wire, against the in-repo API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from kubernetes.aio import client

from cluster.kubernetes.api import CONFIGMAPS, DEPLOYMENTS, ENDPOINTSLICES, PODS, AioKubeApi
from cluster.kubernetes.leader import LEADER_LABEL, LeaderElector
from cluster.kubernetes.runtime import KubeWiring, LeaderScaleTarget, autoscaler_elector
from cluster.spec import RevisionKey
from tests.k8s.fakeapi import FakeApiServer
from tests.test_kubernetes_api import configmap, deployment, endpoint_slice, eventually

NS = "zeroserve-system"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval_s=0.05)
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def wiring(server: FakeApiServer) -> AsyncIterator[KubeWiring]:
    cfg = client.Configuration(host=server.url)
    w = KubeWiring(AioKubeApi(client.ApiClient(cfg)))
    yield w
    await w.close()


async def test_activator_wiring(wiring: KubeWiring) -> None:
    api = wiring.api
    await api.create(DEPLOYMENTS, "default", deployment("iris-1"))
    labels = {"serving.knative.dev/revision": "iris-1"}
    await api.create(
        ENDPOINTSLICES, "default", endpoint_slice("iris-1-x", labels, [("10.1.0.1", True)])
    )
    activators = {"kubernetes.io/service-name": "activator"}
    await api.create(
        ENDPOINTSLICES,
        NS,
        endpoint_slice("activator-x", activators, [("10.2.0.1", True), ("10.2.0.2", True)]),
    )
    routes, endpoints = wiring.routes(), wiring.endpoints()
    peers = wiring.activator_peers(NS, "10.2.0.2", lambda c, i: (c, i))
    assert wiring.routes() is routes  # made once
    await wiring.start(timeout_s=5)
    assert routes.current()[("default", "iris")].revisions[0].name == "iris-1"
    assert [p.address for p in endpoints.current()[RevisionKey("default", "iris-1")]] == [
        "10.1.0.1:8012"
    ]
    assert peers.current() == (2, 1)


async def test_autoscaler_wiring_scales_only_while_leading(
    wiring: KubeWiring, server: FakeApiServer
) -> None:
    api = wiring.api
    await api.create(DEPLOYMENTS, "default", deployment("iris-1", replicas=0))
    await api.create(CONFIGMAPS, NS, configmap("config-autoscaler", {"stable-window": "60s"}))
    await api.create(PODS, NS, {"metadata": {"name": "autoscaler-a"}, "spec": {}})
    revisions, config = wiring.revisions(), wiring.config(NS)
    elector = autoscaler_elector(wiring, NS, "autoscaler-a")
    scale = LeaderScaleTarget(wiring.scale_target(), elector)
    await wiring.start(timeout_s=5)
    assert set(revisions.current()) == {RevisionKey("default", "iris-1")}
    assert config.current() == {"stable-window": "60s"}

    key = RevisionKey("default", "iris-1")
    await scale.set_scale(key, 2)  # a standby does not write
    assert server.get("deployments", "default", "iris-1")["spec"]["replicas"] == 0  # type: ignore[index]
    wiring.spawn(elector.run(), "elector")
    await eventually(lambda: elector.is_leader)
    await scale.set_scale(key, 2)
    assert server.get("deployments", "default", "iris-1")["spec"]["replicas"] == 2  # type: ignore[index]
    await eventually(
        lambda: (
            (server.get("pods", NS, "autoscaler-a") or {}).get("metadata", {}).get("labels")
            == {LEADER_LABEL: "true"}
        )
    )
    await asyncio.sleep(0)


async def test_stepping_down_unlabels_the_pod_and_hands_the_stat_sockets_over(
    wiring: KubeWiring, server: FakeApiServer
) -> None:
    await wiring.api.create(PODS, NS, {"metadata": {"name": "autoscaler-a"}, "spec": {}})
    handed_over: list[bool] = []
    elector = autoscaler_elector(
        wiring, NS, "autoscaler-a", on_stopped_leading=lambda: handed_over.append(True)
    )
    await wiring.start(timeout_s=5)
    wiring.spawn(elector.run(), "elector")

    def labels() -> dict[str, str]:
        pod = server.get("pods", NS, "autoscaler-a") or {}
        return dict(pod.get("metadata", {}).get("labels") or {})

    await eventually(lambda: labels() == {LEADER_LABEL: "true"})
    assert handed_over == []
    elector._step_down()  # what a failed renewal past the deadline does
    assert handed_over == [True]
    await eventually(lambda: labels().get(LEADER_LABEL) != "true")


async def test_leader_scale_target_terms_and_current_scale(
    wiring: KubeWiring, server: FakeApiServer
) -> None:
    """The multiscaler's Leadership: no term while a standby, a new one each time leadership
    is gained; the current scale is the Deployment's spec.replicas."""
    await wiring.api.create(DEPLOYMENTS, "default", deployment("iris-1", replicas=3))
    elector = LeaderElector(wiring.api, NS, "zs-terms", "autoscaler-a", retry_period_s=0.2)
    scale = LeaderScaleTarget(wiring.scale_target(), elector)
    await wiring.start(timeout_s=5)
    assert scale.term is None
    assert await scale.current_scale(RevisionKey("default", "iris-1")) == 3
    assert await scale.current_scale(RevisionKey("default", "nope")) is None
    await elector.step()
    assert scale.term == 1
    elector._step_down()  # a renewal failing past the deadline
    assert scale.term is None
    await elector.step()  # it still holds the Lease: renewing starts a new term
    assert scale.term == 2

"""Shadow revisions in each written form (cluster.shadow): the spec file, the route ConfigMap
(read by the adapters from the in-repo fake API server), the rendered manifests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client

from cluster.inferenceservice import read_documents, translate
from cluster.kubernetes.adapters import KubeRevisions, KubeRoutes
from cluster.kubernetes.api import CONFIGMAPS, DEPLOYMENTS, AioKubeApi
from cluster.kubernetes.informer import Informer
from cluster.kubernetes.render import render
from cluster.kubernetes.scheme import SchemeError, route_from_configmap, traffic_from_configmap
from cluster.spec import ShadowTarget, TrafficTarget
from cluster.spec_loader import SpecError, parse_spec
from tests.k8s.fakeapi import FakeApiServer
from tests.test_kubernetes_api import configmap, deployment, eventually, running


@pytest.fixture
async def api() -> AsyncIterator[AioKubeApi]:
    server = FakeApiServer(bookmark_interval_s=0.05)
    await server.start()
    kube = AioKubeApi(client.ApiClient(client.Configuration(host=server.url)))
    yield kube
    await kube.close()
    server.open.set()
    await server.close()


def _spec(traffic: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "iris",
                "revisions": [
                    {"name": "iris-v1", "command": ["m"]},
                    {"name": "iris-v2", "command": ["m"]},
                    {"name": "iris-v3", "command": ["m"]},
                ],
                "traffic": traffic,
            }
        ]
    }


def test_a_shadow_entry_is_outside_the_split() -> None:
    spec = parse_spec(
        _spec(
            [
                {"revisionName": "iris-v1", "percent": 100},
                {"revisionName": "iris-v2", "shadow": True, "percent": 20},
                {"revisionName": "iris-v3", "shadow": True},
                {"revisionName": "iris-v3", "shadow": False, "percent": 0, "tag": "next"},
            ]
        )
    )
    svc = spec.services[0]
    assert svc.traffic == (
        TrafficTarget(revision="iris-v1", percent=100),
        TrafficTarget(revision="iris-v3", percent=0, tag="next"),
    )
    assert svc.shadows == (
        ShadowTarget(revision="iris-v2", percent=20),
        ShadowTarget(revision="iris-v3", percent=100),  # Istio's default: all of them
    )


V1 = {"revisionName": "iris-v1", "percent": 100}


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        pytest.param(
            {"revisionName": "iris-v9", "shadow": True},
            "services[0].traffic[1].revisionName = 'iris-v9': no such revision",
            id="unknown-revision",
        ),
        pytest.param(
            {"revisionName": "iris-v2", "shadow": True, "percent": 120},
            "services[0].traffic[1].percent = 120: must be an integer within [0, 100]",
            id="percent-over-100",
        ),
        pytest.param(
            {"revisionName": "iris-v2", "shadow": "yes"},
            "services[0].traffic[1].shadow = 'yes': must be true or false",
            id="shadow-not-a-bool",
        ),
        pytest.param(
            {"revisionName": "iris-v2", "shadow": True, "tag": "x"},
            "services[0].traffic[1]: unknown field 'tag' in a shadow entry",
            id="shadow-with-a-tag",
        ),
        pytest.param(
            {"revisionName": "iris-v1", "shadow": True},
            "services[0].traffic[1].revisionName = 'iris-v1': takes a share of the traffic split",
            id="shadow-in-the-split",
        ),
        pytest.param(
            {"shadow": True},
            "services[0].traffic[1].revisionName = None: required",
            id="no-revision",
        ),
    ],
)
def test_shadow_errors_name_the_path(entry: dict[str, Any], error: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec([V1, entry]))
    assert any(e.startswith(error) for e in caught.value.errors), caught.value.errors


def test_a_duplicate_shadow_and_a_split_of_only_shadows_are_errors() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(
            _spec(
                [
                    {"revisionName": "iris-v2", "shadow": True},
                    {"revisionName": "iris-v2", "shadow": True, "percent": 5},
                ]
            )
        )
    assert "services[0].traffic: percents sum to 0, must be 100" in caught.value.errors
    assert any(
        "traffic[1].revisionName = 'iris-v2': duplicate shadow" in e for e in caught.value.errors
    )


def _route(traffic: str) -> dict[str, Any]:
    obj = configmap("route-iris", {"traffic": traffic}, {"serving.knative.dev/route": "iris"})
    obj["metadata"]["namespace"] = "default"
    return obj


def test_the_route_configmap_carries_shadows() -> None:
    service, targets, shadows = route_from_configmap(
        _route(
            "- {revisionName: iris-1, percent: 100}\n"
            "- {revisionName: iris-2, shadow: true, percent: 20}\n"
        )
    )
    assert service == "iris"
    assert targets == (TrafficTarget(revision="iris-1", percent=100),)
    assert shadows == (ShadowTarget(revision="iris-2", percent=20),)
    assert traffic_from_configmap(_route("- {revisionName: iris-1, percent: 100}\n"))[1] == targets
    with pytest.raises(SchemeError) as caught:
        route_from_configmap(
            _route(
                "- {revisionName: iris-1, percent: 100}\n"
                "- {revisionName: iris-2, shadow: true, percent: -1}\n"
            )
        )
    assert caught.value.errors == (
        "ConfigMap default/route-iris: data.traffic[1].percent = -1: must be an integer within "
        "[0, 100] (the share of requests copied)",
    )


def test_render_writes_shadows_into_the_route_configmap() -> None:
    spec = parse_spec(_spec([V1, {"revisionName": "iris-v2", "shadow": True, "percent": 20}]))
    [route] = [o for o in render(spec, image="zs:1") if o["kind"] == "ConfigMap"]
    _, targets, shadows = route_from_configmap(route)
    assert targets == spec.services[0].traffic
    assert shadows == spec.services[0].shadows
    # the shadow revision is a Deployment like any other: it scales on its own
    names = {o["metadata"]["name"] for o in render(spec, image="zs:1") if o["kind"] == "Deployment"}
    assert "iris-v2" in names


async def test_kube_routes_read_shadows_from_the_route_configmap(api: AioKubeApi) -> None:
    deployments = Informer(api, DEPLOYMENTS, None, label_selector="serving.knative.dev/revision")
    routes_inf = Informer(api, CONFIGMAPS, None, label_selector="serving.knative.dev/route")
    routes = KubeRoutes(KubeRevisions(deployments), routes_inf)
    for name in ("iris-1", "iris-2"):
        await api.create(DEPLOYMENTS, "default", deployment(name))
    async with running(deployments, routes_inf):
        await api.create(
            CONFIGMAPS,
            "default",
            configmap(
                "route-iris",
                {
                    "traffic": "- {revisionName: iris-1, percent: 100}\n"
                    "- {revisionName: iris-2, shadow: true, percent: 25}"
                },
                {"serving.knative.dev/route": "iris"},
            ),
        )
        await eventually(lambda: bool(routes.current()[("default", "iris")].shadows))
        svc = routes.current()[("default", "iris")]
        assert svc.traffic == (TrafficTarget(revision="iris-1", percent=100),)
        assert svc.shadows == (ShadowTarget(revision="iris-2", percent=25),)
        # an invalid edit keeps the last valid route, shadows included
        await api.patch(
            CONFIGMAPS,
            "default",
            "route-iris",
            {"data": {"traffic": "- {revisionName: iris-2, shadow: maybe}"}},
        )
        await asyncio.sleep(0.2)
        assert routes.current()[("default", "iris")].shadows == svc.shadows


ISVC = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    sklearn: {storageUri: "s3://models/iris/v1"}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris-next
  annotations: {shadow.zeroserve.dev/of: iris, shadow.zeroserve.dev/percent: "20"}
spec:
  predictor:
    minReplicas: 0
    sklearn: {storageUri: "s3://models/iris/v2"}
"""


def test_an_inferenceservice_shadows_another_by_annotation() -> None:
    docs = read_documents(ISVC, "isvc.yaml")
    spec = parse_spec(translate(docs).spec)
    [svc] = spec.services  # the shadow has no route of its own
    assert svc.name == "iris"
    assert [r.name for r in svc.revisions] == ["iris-predictor-00001", "iris-next-predictor-00001"]
    assert svc.traffic == (TrafficTarget(revision="iris-predictor-00001", percent=100),)
    assert svc.shadows == (ShadowTarget(revision="iris-next-predictor-00001", percent=20),)
    shadow = svc.revision("iris-next-predictor-00001")
    assert shadow is not None
    assert shadow.predictor is not None
    assert shadow.predictor.storage_uri == "s3://models/iris/v2"
    assert shadow.annotations["autoscaling.knative.dev/min-scale"] == "0"


@pytest.mark.parametrize(
    ("annotations", "error"),
    [
        pytest.param(
            "{shadow.zeroserve.dev/of: nope}",
            "InferenceService default/iris-next: metadata.annotations[shadow.zeroserve.dev/of] = "
            "'nope': no InferenceService default/nope in this file to shadow",
            id="unknown-target",
        ),
        pytest.param(
            '{shadow.zeroserve.dev/of: iris, shadow.zeroserve.dev/percent: "x"}',
            "InferenceService default/iris-next: metadata.annotations[shadow.zeroserve.dev/percent]"
            " = 'x': must be an integer within [0, 100]",
            id="bad-percent",
        ),
        pytest.param(
            '{shadow.zeroserve.dev/percent: "5"}',
            "InferenceService default/iris-next: metadata.annotations[shadow.zeroserve.dev/percent]"
            ": only with shadow.zeroserve.dev/of",
            id="percent-alone",
        ),
    ],
)
def test_inferenceservice_shadow_errors_name_the_annotation(annotations: str, error: str) -> None:
    text = ISVC.replace(
        'annotations: {shadow.zeroserve.dev/of: iris, shadow.zeroserve.dev/percent: "20"}',
        f"annotations: {annotations}",
    )
    with pytest.raises(SpecError) as caught:
        translate(read_documents(text, "isvc.yaml"))
    assert any(e.startswith(error) for e in caught.value.errors), caught.value.errors

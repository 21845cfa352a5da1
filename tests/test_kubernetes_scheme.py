"""The Kubernetes scheme: revisions as Deployments, traffic as route ConfigMaps, errors naming fields."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cluster.kubernetes.scheme import (
    SchemeError,
    revision_from_deployment,
    traffic_from_configmap,
)
from cluster.spec import Revision, TrafficTarget


def deployment(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "iris-00001",
            "namespace": "default",
            "labels": {
                "serving.knative.dev/service": "iris",
                "serving.knative.dev/revision": "iris-00001",
            },
            "annotations": dict(annotations),
        },
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "user-container",
                            "image": "ghcr.io/example/iris:1",
                            "ports": [{"containerPort": 8081}],
                        },
                        {
                            "name": "queue-proxy",
                            "env": [{"name": "CONTAINER_CONCURRENCY", "value": "4"}],
                        },
                    ]
                }
            }
        },
    }


def route(traffic: str, service: str = "iris") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "route-iris",
            "namespace": "default",
            "labels": {"serving.knative.dev/route": service},
        },
        "data": {"traffic": traffic},
    }


def test_revision_from_deployment_reads_labels_annotations_and_containers() -> None:
    obj = deployment(
        **{
            "serving.knative.dev/container-concurrency": "4",
            "serving.knative.dev/timeout-seconds": "60",
            "serving.knative.dev/idle-timeout-seconds": "5",
            "autoscaling.knative.dev/min-scale": "1",
        }
    )
    rev = revision_from_deployment(obj)
    assert rev == Revision(
        namespace="default",
        service="iris",
        name="iris-00001",
        container_concurrency=4,
        timeout_s=60.0,
        idle_timeout_s=5.0,
        annotations=obj["metadata"]["annotations"],
        image="ghcr.io/example/iris:1",
        user_port=8081,
    )


def _without_service_label() -> dict[str, Any]:
    obj = deployment(**{"serving.knative.dev/container-concurrency": "4"})
    del obj["metadata"]["labels"]["serving.knative.dev/service"]
    return obj


def _renamed() -> dict[str, Any]:
    obj = deployment(**{"serving.knative.dev/container-concurrency": "4"})
    obj["metadata"]["labels"]["serving.knative.dev/revision"] = "other"
    return obj


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param(
            deployment(**{"serving.knative.dev/container-concurrency": "x"}),
            "Deployment default/iris-00001: "
            "metadata.annotations[serving.knative.dev/container-concurrency] = 'x': "
            "must be an integer >= 0",
            id="container-concurrency-not-an-integer",
        ),
        pytest.param(
            deployment(
                **{
                    "serving.knative.dev/container-concurrency": "4",
                    "serving.knative.dev/timeout-seconds": "0",
                }
            ),
            "Deployment default/iris-00001: "
            "metadata.annotations[serving.knative.dev/timeout-seconds] = '0': must be a number > 0",
            id="timeout-zero",
        ),
        pytest.param(
            _without_service_label(),
            "Deployment default/iris-00001: metadata.labels[serving.knative.dev/service]: required",
            id="service-label-missing",
        ),
        pytest.param(
            _renamed(),
            "Deployment default/iris-00001: metadata.labels[serving.knative.dev/revision] = "
            "'other': must equal metadata.name (iris-00001)",
            id="revision-label-is-not-the-name",
        ),
        pytest.param(
            deployment(
                **{
                    "serving.knative.dev/container-concurrency": "4",
                    "autoscaling.knative.dev/window": "3s",
                }
            ),
            "Deployment default/iris-00001: metadata.annotations: autoscaling.knative.dev/window",
            id="autoscaling-annotation-out-of-range",
        ),
        pytest.param(
            deployment(**{"serving.knative.dev/container-concurrency": "2"}),
            "Deployment default/iris-00001: spec.template.spec.containers[1].env"
            "[CONTAINER_CONCURRENCY] = '4': must agree with the revision's annotations (2)",
            id="queue-proxy-env-disagrees",
        ),
    ],
)
def test_invalid_deployments_name_object_and_field(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemeError) as info:
        revision_from_deployment(obj)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_traffic_from_configmap() -> None:
    service, traffic = traffic_from_configmap(
        route(
            "- {revisionName: iris-00001, percent: 90}\n"
            "- {revisionName: iris-00002, percent: 10, tag: canary}\n"
        )
    )
    assert service == "iris"
    assert traffic == (
        TrafficTarget(revision="iris-00001", percent=90),
        TrafficTarget(revision="iris-00002", percent=10, tag="canary"),
    )


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        pytest.param(
            "- {revisionName: a, percent: 90}",
            "data.traffic: percents sum to 90, must be 100",
            id="sum-not-100",
        ),
        pytest.param(
            "- {revisionName: a, percent: 120}",
            "data.traffic[0].percent = 120: must be an integer within [0, 100]",
            id="percent-out-of-range",
        ),
        pytest.param(
            "- {revisionName: a, percent: 50, tag: x}\n- {revisionName: b, percent: 50, tag: x}",
            "data.traffic[1].tag = 'x': used twice",
            id="duplicate-tag",
        ),
        pytest.param(
            "- {revision: a, percent: 100}",
            "data.traffic[0]: unknown field revision",
            id="misspelt-field",
        ),
        pytest.param("{", "data.traffic: not valid YAML", id="not-yaml"),
        pytest.param("", "data.traffic: must be a non-empty YAML list", id="empty"),
    ],
)
def test_invalid_routes_name_object_and_field(traffic: str, message: str) -> None:
    with pytest.raises(SchemeError) as info:
        traffic_from_configmap(route(traffic))
    want = "ConfigMap default/route-iris: " + message
    assert any(e.startswith(want) for e in info.value.errors), info.value.errors


def test_route_label_must_name_a_service() -> None:
    obj = copy.deepcopy(route("- {revisionName: a, percent: 100}", service="Not_A_Label"))
    with pytest.raises(SchemeError, match=r"metadata.labels\[serving.knative.dev/route\]"):
        traffic_from_configmap(obj)

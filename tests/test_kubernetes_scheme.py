"""The Kubernetes scheme: revisions as Deployments, traffic as route ConfigMaps, errors naming fields."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from cluster.kubernetes.adapters import KubeRevisions
from cluster.kubernetes.informer import Informer
from cluster.kubernetes.scheme import (
    MisplacedAnnotation,
    SchemeError,
    misplaced_annotations,
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


# -- where autoscaling annotations are read (issue 19, item 6) ----------------------------------
#
# Knative reads them from the Revision's metadata.annotations and copies them onto the
# Deployment and its pod template. Here the Deployment is the revision: its metadata.annotations
# come first; the pod template's (spec.template.metadata.annotations, where a Knative Service
# carries them) are read too, and a key found only there is reported.

A = "autoscaling.knative.dev/"
CC = {"serving.knative.dev/container-concurrency": "4"}  # = the sidecar's env in deployment()


def valid(**annotations: str) -> dict[str, Any]:
    return deployment(**CC, **annotations)


def autoscaling(rev: Revision) -> dict[str, str]:
    return {k: v for k, v in rev.annotations.items() if k.startswith(A)}


def with_template(obj: dict[str, Any], **annotations: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["spec"]["template"]["metadata"] = {"annotations": dict(annotations)}
    return obj


def test_autoscaling_annotations_on_the_pod_template_are_read() -> None:
    obj = with_template(valid(), **{A + "min-scale": "2", "prometheus.io/scrape": "true"})
    rev = revision_from_deployment(obj)
    assert autoscaling(rev) == {A + "min-scale": "2"}
    assert misplaced_annotations(obj) == (
        MisplacedAnnotation(key=A + "min-scale", template_value="2", deployment_value=None),
    )


def test_the_deployments_own_annotation_wins_over_the_pod_templates() -> None:
    obj = with_template(
        valid(**{A + "max-scale": "5", A + "target": "3"}),
        **{A + "max-scale": "9", A + "target": "3"},
    )
    assert autoscaling(revision_from_deployment(obj)) == {
        A + "max-scale": "5",
        A + "target": "3",
    }
    # The same value in both places (what Knative writes) is not reported; a different one is.
    assert misplaced_annotations(obj) == (
        MisplacedAnnotation(key=A + "max-scale", template_value="9", deployment_value="5"),
    )


def test_annotations_in_the_deployments_metadata_only_are_not_reported() -> None:
    obj = valid(**{A + "min-scale": "1"})
    assert misplaced_annotations(obj) == ()
    assert misplaced_annotations(with_template(obj, **{A + "min-scale": "1"})) == ()


def test_an_invalid_pod_template_annotation_names_the_template_field() -> None:
    obj = with_template(valid(**{A + "max-scale": "2"}), **{A + "window": "3s"})
    with pytest.raises(SchemeError) as info:
        revision_from_deployment(obj)
    assert info.value.errors == (
        "Deployment default/iris-00001: spec.template.metadata.annotations: "
        f"{A}window = 3s: must be within [6s, 1h]",
    )
    obj = with_template(valid(**{A + "window": "3s"}), **{A + "max-scale": "2"})
    with pytest.raises(SchemeError) as info:
        revision_from_deployment(obj)
    assert info.value.errors == (
        "Deployment default/iris-00001: metadata.annotations: "
        f"{A}window = 3s: must be within [6s, 1h]",
    )


class _Deployments:
    """The two methods of an Informer that KubeRevisions uses."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str], dict[str, Any]] = {}
        self.handlers: list[Callable[[Sequence[Any]], None]] = []

    def items(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.objs

    def add_handler(self, handler: Callable[[Sequence[Any]], None]) -> None:
        self.handlers.append(handler)

    def put(self, obj: dict[str, Any], rv: str) -> None:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = rv
        self.objs[("default", obj["metadata"]["name"])] = obj
        for handler in self.handlers:
            handler(())


def test_revisions_warn_once_naming_a_key_found_only_on_the_pod_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    informer = _Deployments()
    revisions = KubeRevisions(cast(Informer, informer))
    caplog.set_level(logging.WARNING, logger="zeroserve.kubernetes")
    obj = with_template(valid(), **{A + "min-scale": "2"})
    informer.put(obj, "1")
    informer.put(obj, "2")  # a status update: same annotations, no second warning
    (rev,) = revisions.current().values()
    assert rev.annotations[A + "min-scale"] == "2"
    warnings = [r for r in caplog.records if r.name == "zeroserve.kubernetes"]
    assert [(r.getMessage(), r.__dict__["annotation"]) for r in warnings] == [
        ("autoscaling annotation found only on the pod template", A + "min-scale")
    ]
    assert warnings[0].__dict__["revision"] == "iris-00001"
    # Moved to the Deployment's metadata: nothing more to say.
    informer.put(valid(**{A + "min-scale": "2"}), "3")
    assert len([r for r in caplog.records if r.name == "zeroserve.kubernetes"]) == 1


def test_deploy_manifests_put_autoscaling_annotations_on_the_deployment() -> None:
    root = Path(__file__).resolve().parent.parent / "deploy"
    deployments = [
        doc
        for path in sorted(root.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict)
        and doc.get("kind") == "Deployment"
        and "serving.knative.dev/revision" in (doc["metadata"].get("labels") or {})
    ]
    assert deployments
    for obj in deployments:
        assert misplaced_annotations(obj) == ()
        assert any(k.startswith(A) for k in obj["metadata"].get("annotations") or {})

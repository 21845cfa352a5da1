"""deploy/: the manifests parse, follow the scheme, and grant each component only what it uses.

Read with PyYAML (no kubectl needed); kustomizations are followed through their ``resources``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.kubernetes.adapters import QUEUE_PORT_NAMES, STATS_PORT_NAME
from cluster.kubernetes.leader import LEADER_LABEL
from cluster.kubernetes.scheme import REVISION_LABEL, TIMEOUT_SECONDS, revision_from_deployment

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    namespace = kustomization.get("namespace")
    out: list[dict[str, Any]] = []
    for res in kustomization["resources"]:
        path = directory / res
        docs = (
            render(path)
            if path.is_dir()
            else [d for d in yaml.safe_load_all(path.read_text()) if d]
        )
        for doc in docs:
            if namespace and doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
                doc["metadata"]["namespace"] = namespace
        out.extend(docs)
    return out


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


# What each component's code does with the API (cluster/kubernetes): (group, resource, namespace
# scope) → verbs. "*" is cluster-wide, "ns" is zeroserve-system only.
NEEDED: dict[str, dict[tuple[str, str, str], set[str]]] = {
    "activator": {
        ("apps", "deployments", "*"): {"list", "watch"},
        ("", "configmaps", "*"): {"list", "watch"},
        ("discovery.k8s.io", "endpointslices", "*"): {"list", "watch"},
        ("", "pods", "*"): {"get"},  # (cluster.kubernetes.podstarts: a cold start's steps)
    },
    "autoscaler": {
        ("apps", "deployments", "*"): {"list", "watch", "patch"},
        ("apps", "deployments/scale", "*"): {"get", "patch"},
        ("discovery.k8s.io", "endpointslices", "*"): {"list", "watch"},
        ("", "configmaps", "ns"): {"get", "list", "watch"},
        ("coordination.k8s.io", "leases", "ns"): {"create", "get", "update"},
        ("", "pods", "ns"): {"patch"},
    },
}


def granted(docs: list[dict[str, Any]], account: str) -> dict[tuple[str, str, str], set[str]]:
    out: dict[tuple[str, str, str], set[str]] = {}
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s["name"] == account for s in binding["subjects"]):
            continue
        role = find(docs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        scope = "*" if role["kind"] == "ClusterRole" else "ns"
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault((group, resource, scope), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("component", ["activator", "autoscaler"])
def test_rbac_grants_exactly_what_the_component_uses(component: str) -> None:
    docs = render(DEPLOY)
    assert granted(docs, component) == NEEDED[component]
    deployment = find(docs, "Deployment", component)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == component


@pytest.mark.parametrize("component", ["activator", "autoscaler"])
def test_system_pods_are_hardened(component: str) -> None:
    docs = render(DEPLOY)
    deployment = find(docs, "Deployment", component)
    assert deployment["metadata"]["namespace"] == "zeroserve-system"
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in containers(deployment):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"requests", "limits"} <= set(c["resources"])
        assert "readinessProbe" in c
        assert "livenessProbe" in c


def test_activator_has_a_disruption_budget_and_a_peer_port() -> None:
    docs = render(DEPLOY)
    pdb = find(docs, "PodDisruptionBudget", "activator")
    assert pdb["spec"]["minAvailable"] == 1
    service = find(docs, "Service", "activator")
    # KubeActivatorPeers counts the ready addresses of this port.
    assert any(p["name"] in QUEUE_PORT_NAMES for p in service["spec"]["ports"])


def test_autoscaler_service_selects_the_leader() -> None:
    service = find(render(DEPLOY), "Service", "autoscaler")
    assert service["spec"]["selector"][LEADER_LABEL] == "true"


def test_config_autoscaler_is_installed() -> None:
    assert find(render(DEPLOY), "ConfigMap", "config-autoscaler")["metadata"]["namespace"] == (
        "zeroserve-system"
    )


def test_example_revision_follows_the_scheme() -> None:
    docs = render(DEPLOY / "examples" / "iris")
    deployment = find(docs, "Deployment", "iris-00001")
    rev = revision_from_deployment(deployment)  # raises, naming the field, if it does not
    assert (rev.namespace, rev.service, rev.container_concurrency) == ("default", "iris", 4)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == int(
        deployment["metadata"]["annotations"][TIMEOUT_SECONDS]
    )
    user, queue = containers(deployment)
    assert user["lifecycle"]["preStop"]["httpGet"] == {"path": "/wait-for-drain", "port": 8022}
    assert queue["name"] == "queue-proxy"
    assert queue["readinessProbe"]["httpGet"]["port"] == 8012
    ports = {p["name"]: p["containerPort"] for p in queue["ports"]}
    assert ports["http"] == 8012
    assert ports[STATS_PORT_NAME] == 9090
    service = find(docs, "Service", "iris-00001")
    assert service["metadata"]["labels"][REVISION_LABEL] == "iris-00001"
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", STATS_PORT_NAME}
    route = find(docs, "ConfigMap", "route-iris")
    assert route["metadata"]["labels"]["serving.knative.dev/route"] == "iris"


def test_gpu_overlay_asks_for_one_gpu() -> None:
    kustomization = yaml.safe_load((DEPLOY / "overlays" / "gpu" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../examples/iris"]
    ops = yaml.safe_load(kustomization["patches"][0]["patch"])
    gpu = next(op for op in ops if op["path"].endswith("nvidia.com~1gpu"))
    assert gpu["value"] == 1
    assert gpu["path"].startswith("/spec/template/spec/containers/0/resources/limits/")

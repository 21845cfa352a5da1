"""``zeroserve render``: the manifests read back by the scheme's own reader, the fetch step run."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.inferenceservice import translate
from cluster.kubernetes.render import CACHE_DIR, CACHE_ENV, INIT_CONTAINER, render, to_yaml
from cluster.kubernetes.scheme import revision_from_deployment, traffic_from_configmap
from cluster.spec import ReadinessProbe, Revision, Spec
from cluster.spec_loader import parse_spec, predictor_command
from queue_proxy.config import Settings
from zeroserve.cli import main
from zeroserve.specfile import load

REPO = Path(__file__).resolve().parent.parent
IMAGE = "registry.example/zeroserve:9"
SHA = "ab" * 32


def isvc(name: str, predictor: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, **meta},
        "spec": {"predictor": predictor},
    }


NATIVE = {
    "services": [
        {
            "name": "iris",
            "namespace": "models",
            "revisions": [
                {
                    "name": "iris-v1",
                    "containerConcurrency": 4,
                    "timeoutSeconds": 120,
                    "responseStartTimeoutSeconds": 10,
                    "idleTimeoutSeconds": 2.5,
                    "annotations": {"autoscaling.knative.dev/target": "3"},
                    "readinessProbe": {"tcpSocket": {"port": 0}, "periodSeconds": 2},
                    "command": ["python", "-m", "examples.iris_server"],
                    "env": {"MODEL_NAME": "iris"},
                    "port": 8081,
                },
                {
                    "name": "iris-v2",
                    "predictor": {
                        "format": "onnx",
                        "storageUri": "s3://models/iris/model.onnx",
                        "sha256": SHA,
                    },
                    "env": {"AWS_ENDPOINT_URL": "http://minio:9000"},
                },
                {"name": "iris-v3", "image": "ghcr.io/example/iris:3"},
            ],
            "traffic": [
                {"revisionName": "iris-v1", "percent": 60, "tag": "one"},
                {"revisionName": "iris-v2", "percent": 40},
                {"revisionName": "iris-v3", "percent": 0, "tag": "three"},
            ],
        }
    ]
}
ISVC = [
    isvc("sk", {"sklearn": {"storageUri": "file:///m/model.joblib"}, "minReplicas": 0}),
    isvc(
        "custom",
        {
            "containers": [
                {
                    "image": "ghcr.io/example/custom:1",
                    "command": ["serve"],
                    "args": ["--port", "8090"],
                    "ports": [{"containerPort": 8090}],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ],
            "containerConcurrency": 1,
            "timeout": 30,
        },
        namespace="team-a",
    ),
]


def rendered(spec: Spec, **kw: Any) -> list[dict[str, Any]]:
    """Rendered, printed and parsed back: what `kubectl apply -f -` reads."""
    return list(yaml.safe_load_all(to_yaml(render(spec, image=IMAGE, **kw))))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    pod = obj["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    assert isinstance(c, dict)
    return c


def queue_proxy_settings(obj: dict[str, Any]) -> Settings:
    fake = {"metadata.namespace": "ns", "metadata.name": "pod-1", "status.podIP": "10.0.0.1"}
    env = {
        e["name"]: e["value"] if "value" in e else fake[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container(obj, "queue-proxy")["env"]
    }
    return Settings.from_env(env)


def seen_by_kubernetes(rev: Revision) -> Revision:
    """What the scheme's reader can give back of a revision (it reads no command, env, probe)."""
    image = rev.image if rev.image and rev.predictor is None else IMAGE
    return dataclasses.replace(
        rev,
        image=image,
        command=(),
        env={},
        readiness_probe=ReadinessProbe(),
        predictor=None,
        annotations=dict(rev.annotations),
    )


SPECS = [
    pytest.param(lambda: parse_spec(NATIVE), id="native"),
    pytest.param(lambda: parse_spec(translate(ISVC).spec), id="inferenceservice"),
    pytest.param(lambda: load(REPO / "examples" / "canary.yaml"), id="examples-canary"),
]


@pytest.mark.parametrize("make", SPECS)
def test_round_trip_through_the_schemes_reader(make: Any) -> None:
    spec: Spec = make()
    objs = rendered(spec)
    revisions = {r.key: r for r in spec.revisions().values()}
    deployments = by_kind(objs, "Deployment")
    assert len(deployments) == len(revisions)
    for obj in deployments:
        got = revision_from_deployment(obj)
        want = revisions[got.key]
        # (the reader keeps every annotation; the serving.knative.dev/* ones it also parsed)
        autoscaling = {
            k: v for k, v in got.annotations.items() if k.startswith("autoscaling.knative.dev/")
        }
        assert dataclasses.replace(got, annotations=autoscaling) == seen_by_kubernetes(want)
        # the queue-proxy's own parser reads the revision's settings from the sidecar's env
        qp = queue_proxy_settings(obj)
        assert qp.container_concurrency == want.container_concurrency
        assert qp.timeout_s == want.timeout_s
        assert qp.response_start_timeout_s == want.response_start_timeout_s
        assert qp.idle_timeout_s == want.idle_timeout_s
        assert qp.user_port == want.user_port
        assert qp.revision == want.name
        assert qp.service == want.service
        probe = dataclasses.replace(want.readiness_probe, port=want.user_port)
        if probe.period_s == 0:
            probe = dataclasses.replace(probe, timeout_s=1.0)
        assert qp.readiness_probe == probe
    routes = {traffic_from_configmap(o) for o in by_kind(objs, "ConfigMap")}
    assert routes == {(s.name, s.traffic) for s in spec.services}
    for obj in by_kind(objs, "ConfigMap"):
        svc = obj["metadata"]["labels"]["serving.knative.dev/route"]
        assert obj["metadata"]["name"] == f"route-{svc}"
    services = by_kind(objs, "Service")
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services} == {
        (k.namespace, k.name) for k in revisions
    }


def test_a_predictor_revision_fills_the_node_cache_first() -> None:
    objs = rendered(parse_spec(NATIVE))
    [dep] = [o for o in by_kind(objs, "Deployment") if o["metadata"]["name"] == "iris-v2"]
    pod = dep["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "hostPath" in v]
    assert volume["hostPath"]["path"] == CACHE_DIR
    model = container(dep, "user-container")
    fetch = container(dep, INIT_CONTAINER)
    rev = parse_spec(NATIVE).services[0].revision("iris-v2")
    assert rev is not None
    assert rev.predictor is not None
    assert model["image"] == fetch["image"] == IMAGE
    assert model["command"] == list(predictor_command("iris", rev.predictor))
    assert fetch["command"] == [
        *("python", "-m", "modelserver.storage", "fetch", "s3://models/iris/model.onnx"),
        *("--sha256", SHA),
    ]
    # both containers see the cache at the path their ZEROSERVE_MODEL_CACHE names, and the
    # fetch step has the revision's env (endpoints, credentials)
    for c in (model, fetch):
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env[CACHE_ENV] == CACHE_DIR
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts[volume["name"]] == CACHE_DIR
    # the fetch runs after the cache directory became the image user's
    assert pod["initContainers"][-1]["name"] == INIT_CONTAINER


def test_other_revisions_have_no_fetch_step() -> None:
    objs = rendered(parse_spec(NATIVE))
    for dep in by_kind(objs, "Deployment"):
        if dep["metadata"]["name"] != "iris-v2":
            assert "initContainers" not in dep["spec"]["template"]["spec"]
            # (only the queue-proxy's config-observability)
            volumes = dep["spec"]["template"]["spec"]["volumes"]
            assert [v["name"] for v in volumes] == ["config-observability"]


def test_a_custom_container_renders_with_its_image_command_and_resources() -> None:
    tr = translate(ISVC)
    objs = rendered(parse_spec(tr.spec), kube=tr.kube)
    [dep] = [o for o in by_kind(objs, "Deployment") if o["metadata"]["namespace"] == "team-a"]
    c = container(dep, "user-container")
    assert c["image"] == "ghcr.io/example/custom:1"
    assert c["command"] == ["serve"]
    assert c["args"] == ["--port", "8090"]
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert c["ports"] == [{"name": "user-port", "containerPort": 8090}]
    # its own image: the pod does not force the zeroserve image's user on it
    assert "runAsUser" not in dep["spec"]["template"]["spec"]["securityContext"]


def test_a_command_revision_runs_in_the_zeroserve_image() -> None:
    objs = rendered(parse_spec(NATIVE))
    [dep] = [o for o in by_kind(objs, "Deployment") if o["metadata"]["name"] == "iris-v1"]
    c = container(dep, "user-container")
    assert (c["image"], c["command"]) == (IMAGE, ["python", "-m", "examples.iris_server"])
    assert {"name": "PORT", "value": "8081"} in c["env"]


def test_no_replicas_field_so_a_second_apply_keeps_the_autoscalers_scale() -> None:
    for dep in by_kind(rendered(parse_spec(NATIVE)), "Deployment"):
        assert "replicas" not in dep["spec"]


def test_the_rendered_fetch_step_fetches(tmp_path: Path) -> None:
    """The init container's command, run here as it runs in the pod (its env, a cache dir in
    place of the node's): it leaves the artifact in the cache; a wrong pin fails it."""
    model = tmp_path / "model.joblib"
    model.write_bytes(b"not really a model, but bytes to cache")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    def run_fetch(sha256: str) -> subprocess.CompletedProcess[str]:
        pred = {"format": "sklearn", "storageUri": model.as_uri(), "sha256": sha256}
        spec = parse_spec(
            {"services": [{"name": "m", "revisions": [{"name": "m1", "predictor": pred}]}]}
        )
        [dep] = by_kind(rendered(spec), "Deployment")
        fetch = container(dep, INIT_CONTAINER)
        env = {e["name"]: e["value"] for e in fetch["env"]}
        env[CACHE_ENV] = str(tmp_path / "cache")  # the node's path, here
        command = [sys.executable, *fetch["command"][1:]]
        return subprocess.run(
            command,
            env={**os.environ, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = run_fetch(digest)
    assert ok.returncode == 0, ok.stderr
    path = Path(ok.stdout.strip().splitlines()[-1])
    assert path.read_bytes() == model.read_bytes()
    bad = run_fetch("0" * 64)
    assert bad.returncode != 0
    assert model.as_uri() in bad.stderr


def test_cli_render_prints_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "isvc.yaml"
    path.write_text(yaml.safe_dump_all(ISVC))
    assert main(["render", str(path), "--image", IMAGE]) == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Deployment", "sk-predictor-00001"),
        ("Service", "sk-predictor-00001"),
        ("ConfigMap", "route-sk"),
        ("Deployment", "custom-predictor-00001"),
        ("Service", "custom-predictor-00001"),
        ("ConfigMap", "route-custom"),
    ]
    path.write_text(yaml.safe_dump(isvc("sk", {"sklearn": {"storageURI": "x"}})))
    assert main(["render", str(path)]) == 1
    err = capsys.readouterr().err
    assert "zeroserve render: " in err
    assert "spec.predictor.sklearn.storageURI: unknown field" in err

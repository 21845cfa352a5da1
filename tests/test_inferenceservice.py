"""KServe InferenceService files: the mapping onto the native spec, errors naming fields, canary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.inferenceservice import History, translate
from cluster.spec import Predictor, ReadinessProbe, Spec, TrafficTarget
from cluster.spec_loader import SpecError, parse_spec
from zeroserve.cli import main
from zeroserve.specfile import SpecReader, load

REPO = Path(__file__).resolve().parent.parent


def isvc(predictor: dict[str, Any], name: str = "iris", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, **meta},
        "spec": {"predictor": predictor},
    }


SKLEARN = {"sklearn": {"storageUri": "s3://models/iris/model.joblib"}}


def native(*docs: dict[str, Any]) -> Spec:
    return parse_spec(translate(docs).spec)


# -- the mapping -----------------------------------------------------------------------------


def test_a_framework_predictor_becomes_the_built_in_server() -> None:
    [svc] = native(isvc(SKLEARN)).services
    assert (svc.namespace, svc.name) == ("default", "iris")
    [rev] = svc.revisions
    assert rev.name == "iris-predictor-00001"
    assert rev.predictor == Predictor(format="sklearn", storage_uri="s3://models/iris/model.joblib")
    assert rev.command[:3] == ("python", "-m", "modelserver")
    assert rev.readiness_probe.path == "/v2/health/ready"
    # KServe's default minReplicas is 1 (min-scale "1"), no max
    assert dict(rev.annotations) == {"autoscaling.knative.dev/min-scale": "1"}
    assert svc.traffic == (TrafficTarget(revision="iris-predictor-00001", percent=100),)


@pytest.mark.parametrize(
    ("predictor", "meta", "want"),
    [
        pytest.param(
            {"model": {"modelFormat": {"name": "xgboost"}, "storageUri": "file:///m/x.json"}},
            {},
            {"predictor": Predictor(format="xgboost", storage_uri="file:///m/x.json")},
            id="model-format",
        ),
        pytest.param(
            {
                "model": {
                    "modelFormat": {"name": "lightgbm", "version": "4"},
                    "runtime": "kserve-lgbserver",
                    "storageUri": "/m/model.txt",
                }
            },
            {},
            {"predictor": Predictor(format="lightgbm", storage_uri="/m/model.txt")},
            id="kserve-runtime-name",
        ),
        pytest.param(
            {**SKLEARN, "minReplicas": 0, "maxReplicas": 4, "scaleTarget": 7, "scaleMetric": "rps"},
            {},
            {
                "annotations": {
                    "autoscaling.knative.dev/min-scale": "0",
                    "autoscaling.knative.dev/max-scale": "4",
                    "autoscaling.knative.dev/target": "7",
                    "autoscaling.knative.dev/metric": "rps",
                }
            },
            id="replicas-and-scale",
        ),
        pytest.param(
            {**SKLEARN, "minReplicas": 2},
            {
                "annotations": {
                    "autoscaling.knative.dev/window": "20s",
                    "autoscaling.knative.dev/min-scale": "0",  # minReplicas wins (KServe)
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",  # not passed on
                }
            },
            {
                "annotations": {
                    "autoscaling.knative.dev/window": "20s",
                    "autoscaling.knative.dev/min-scale": "2",
                }
            },
            id="annotations-pass-through",
        ),
        pytest.param(
            SKLEARN,
            {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
            {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
            id="min-scale-annotation-without-minReplicas",
        ),
        pytest.param(
            {**SKLEARN, "containerConcurrency": 4, "timeout": 30},
            {},
            {"container_concurrency": 4, "timeout_s": 30.0, "response_start_timeout_s": 30.0},
            id="concurrency-and-timeout",
        ),
        pytest.param(
            {
                "onnx": {
                    "storageUri": "file:///m/iris.onnx",
                    "protocolVersion": "v2",
                    "env": [{"name": "OMP_NUM_THREADS", "value": 1}],
                }
            },
            {"namespace": "models"},
            {
                "predictor": Predictor(format="onnx", storage_uri="file:///m/iris.onnx"),
                "env": {"OMP_NUM_THREADS": "1"},
                "namespace": "models",
            },
            id="env-and-namespace",
        ),
        pytest.param(
            {
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "ghcr.io/example/iris:1",
                        "command": ["python", "-m", "examples.iris_server"],
                        "args": ["--verbose"],
                        "env": [{"name": "MODEL_NAME", "value": "iris"}],
                        "ports": [{"containerPort": 8081, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8081}},
                    }
                ]
            },
            {},
            {
                "command": ("python", "-m", "examples.iris_server", "--verbose"),
                "image": "ghcr.io/example/iris:1",
                "env": {"MODEL_NAME": "iris"},
                "user_port": 8081,
                "predictor": None,
                "readiness_probe": ReadinessProbe(kind="http", path="/v2/health/ready", port=0),
            },
            id="custom-container",
        ),
    ],
)
def test_mapping(predictor: dict[str, Any], meta: dict[str, Any], want: dict[str, Any]) -> None:
    [svc] = native(isvc(predictor, **meta)).services
    [rev] = svc.revisions
    got = {k: getattr(rev, k) for k in want}
    got = {k: dict(v) if k in ("annotations", "env") else v for k, v in got.items()}
    assert got == want


def test_several_documents_are_several_services() -> None:
    text = yaml.safe_dump_all([isvc(SKLEARN, "iris"), isvc(SKLEARN, "iris2")])
    spec = native(*yaml.safe_load_all(text))
    assert [s.name for s in spec.services] == ["iris", "iris2"]


def test_the_custom_containers_command_and_resources_are_kept_for_kubernetes() -> None:
    c: dict[str, object] = {"image": "img", "command": ["serve"], "args": ["--port", "8080"]}
    c["resources"] = {"limits": {"nvidia.com/gpu": 1, "memory": "1Gi"}}
    tr = translate([isvc({"containers": [c]})])
    assert tr.kube[("default", "iris-predictor-00001")] == {
        "command": ["serve"],
        "args": ["--port", "8080"],
        "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}},
    }


# -- errors that name the field --------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        pytest.param(
            {**isvc(SKLEARN), "spec": {"predictor": SKLEARN, "transformer": {}}},
            "InferenceService default/iris: spec.transformer: not supported yet",
            id="transformer",
        ),
        pytest.param(
            isvc({"tensorflow": {"storageUri": "gs://m"}}),
            "spec.predictor.tensorflow: not supported yet",
            id="tensorflow",
        ),
        pytest.param(
            isvc({**SKLEARN, "logger": {"mode": "all"}}),
            "spec.predictor.logger.url: required",
            id="logger-without-url",
        ),
        pytest.param(
            isvc({"sklearn": {"storageURI": "s3://m"}}),
            "spec.predictor.sklearn.storageURI: unknown field (known: storageUri, protocolVersion,",
            id="misspelt-storageUri",
        ),
        pytest.param(
            isvc({"sklearn": {}}),
            "spec.predictor.sklearn.storageUri = None: required",
            id="no-storageUri",
        ),
        pytest.param(
            isvc({**SKLEARN, "minReplica": 0}),
            "spec.predictor.minReplica: unknown field (known: minReplicas,",
            id="misspelt-minReplicas",
        ),
        pytest.param(
            isvc({**SKLEARN, "xgboost": {"storageUri": "s3://m"}}),
            "spec.predictor: needs exactly one of sklearn, xgboost, lightgbm, onnx, pytorch, "
            "model, containers (found sklearn, xgboost)",
            id="two-implementations",
        ),
        pytest.param(
            isvc({"model": {"modelFormat": {"name": "sklearn"}, "runtime": "kserve-mlserver"}}),
            "spec.predictor.model.runtime = 'kserve-mlserver': not available (runtimes: zeroserve,",
            id="unknown-runtime",
        ),
        pytest.param(
            isvc({"model": {"modelFormat": {"name": "onnx"}, "runtime": "kserve-sklearnserver"}}),
            "spec.predictor.model.runtime = 'kserve-sklearnserver': does not serve the onnx format",
            id="runtime-of-another-format",
        ),
        pytest.param(
            isvc({"model": {"modelFormat": {"name": "huggingface"}, "storageUri": "s3://m"}}),
            "spec.predictor.model.modelFormat.name = 'huggingface': not supported yet",
            id="huggingface-format",
        ),
        pytest.param(
            isvc({**SKLEARN, "scaleMetric": "cpu"}),
            "spec.predictor.scaleMetric = 'cpu': not supported: zeroserve's KPA scales on "
            "concurrency or rps",
            id="cpu-metric",
        ),
        pytest.param(
            isvc({**SKLEARN, "canaryTrafficPercent": 110}),
            "spec.predictor.canaryTrafficPercent = 110: must be within [0, 100]",
            id="canary-over-100",
        ),
        pytest.param(
            isvc({**SKLEARN, "minReplicas": 3, "maxReplicas": 2}),
            "spec.predictor.maxReplicas = 2: must be >= minReplicas (3)",
            id="max-below-min",
        ),
        pytest.param(
            isvc({"containers": [{"image": "a"}, {"image": "b"}]}),
            "spec.predictor.containers[1]: not supported yet (one container per predictor)",
            id="second-container",
        ),
        pytest.param(
            isvc({"containers": [{"image": "a", "env": [{"name": "X", "valueFrom": {}}]}]}),
            "spec.predictor.containers[0].env[0].valueFrom: not supported yet",
            id="env-valueFrom",
        ),
        pytest.param(
            isvc({"containers": [{"image": "a", "volumeMounts": []}]}),
            "spec.predictor.containers[0].volumeMounts: not supported yet",
            id="volume-mounts",
        ),
        pytest.param(
            isvc(SKLEARN, name="a" * 48),
            "metadata.name = '" + "a" * 48 + "': at most 47 characters",
            id="name-too-long-for-its-revision",
        ),
        pytest.param(
            isvc(SKLEARN, annotations={"serving.kserve.io/deploymentMode": "RawDeployment"}),
            "not supported: zeroserve serves the Serverless mode",
            id="raw-deployment",
        ),
        pytest.param(
            {**isvc(SKLEARN), "apiVersion": "serving.kserve.io/v1alpha1"},
            "only serving.kserve.io/v1beta1 InferenceService documents are read",
            id="other-api-version",
        ),
    ],
)
def test_errors_name_the_field(doc: dict[str, Any], error: str) -> None:
    with pytest.raises(SpecError) as info:
        translate([doc])
    assert any(error in e for e in info.value.errors), info.value.errors


def test_every_error_is_reported_at_once() -> None:
    bad = isvc({"sklearn": {"storageURI": "x"}, "workerSpec": {}})
    with pytest.raises(SpecError) as info:
        translate([bad, isvc(SKLEARN), {**isvc(SKLEARN), "spec": {}}])
    assert len(info.value.errors) == 4, info.value.errors


def test_a_duplicate_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"duplicate InferenceService \(documents 1 and 2\)"):
        translate([isvc(SKLEARN), isvc(SKLEARN)])


def write(path: Path, *docs: object) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_native_errors_are_told_in_the_files_terms(tmp_path: Path) -> None:
    doc = isvc(SKLEARN, annotations={"autoscaling.knative.dev/window": "3s"})
    with pytest.raises(SpecError) as info:
        load(write(tmp_path / "isvc.yaml", doc))
    [error] = info.value.errors
    assert error.startswith(
        f"{tmp_path / 'isvc.yaml'}: InferenceService default/iris (revision "
        "iris-predictor-00001): metadata.annotations"
    ), error
    assert "autoscaling.knative.dev/window = 3s: must be within [6s, 1h]" in error


def test_a_file_mixing_both_forms_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.yaml", isvc(SKLEARN), {"services": []})
    with pytest.raises(SpecError, match="document 2 is a native spec"):
        load(path)


def test_validate_reads_an_inferenceservice_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "good.yaml", isvc(SKLEARN), isvc(SKLEARN, "iris2"))
    assert main(["validate", str(good)]) == 0
    assert "ok (2 services)" in capsys.readouterr().out
    bad = write(tmp_path / "bad.yaml", isvc({"sklearn": {"storageURI": "x"}}))
    assert main(["validate", str(bad)]) == 1
    assert "spec.predictor.sklearn.storageURI: unknown field" in capsys.readouterr().err


# -- the canary across edits -----------------------------------------------------------------


def split(spec: Spec) -> list[tuple[str, int, str]]:
    [svc] = spec.services
    assert {r.name for r in svc.revisions} == {t.revision for t in svc.traffic}
    return [(t.revision, t.percent, t.tag) for t in svc.traffic]


def test_canary_edit_sequence(tmp_path: Path) -> None:
    """v1 100 % → a new predictor with canaryTrafficPercent 10 → v1 90 / v2 10 → the field
    removed → v2 100 %; then canaryTrafficPercent 0 on v2 rolls back to v1 (KServe's rollback)."""
    path = tmp_path / "iris.yaml"
    v1 = isvc({"sklearn": {"storageUri": "s3://models/iris/v1.joblib"}})
    v2 = isvc({"sklearn": {"storageUri": "s3://models/iris/v2.joblib"}})
    canary = copy.deepcopy(v2)
    canary["spec"]["predictor"]["canaryTrafficPercent"] = 10
    reader = SpecReader(write(path, v1))
    one, two = "iris-predictor-00001", "iris-predictor-00002"

    assert split(reader.load()) == [(one, 100, "")]
    write(path, canary)
    spec = reader.load()
    assert split(spec) == [(two, 10, ""), (one, 90, "prev")]
    # the rolled-out revision is still v1, as it was written before the edit
    old = spec.services[0].revision(one)
    assert old is not None
    assert old.predictor is not None
    assert old.predictor.storage_uri == "s3://models/iris/v1.joblib"
    assert split(reader.load()) == [(two, 10, ""), (one, 90, "prev")]  # re-read: unchanged
    write(path, v2)
    assert split(reader.load()) == [(two, 100, "")]
    rollback = copy.deepcopy(v2)
    rollback["spec"]["predictor"]["canaryTrafficPercent"] = 0
    write(path, rollback)
    assert split(reader.load()) == [(two, 0, ""), (one, 100, "prev")]


def test_a_rejected_edit_does_not_move_the_rollout(tmp_path: Path) -> None:
    path = tmp_path / "iris.yaml"
    reader = SpecReader(write(path, isvc(SKLEARN)))
    reader.load()
    bad = isvc({"onnx": {"storageUri": "s3://m/iris.onnx"}, "workerSpec": {}})
    write(path, bad)
    with pytest.raises(SpecError):
        reader.load()
    nxt = isvc({"onnx": {"storageUri": "s3://m/iris.onnx"}, "canaryTrafficPercent": 25})
    write(path, nxt)
    assert split(reader.load()) == [
        ("iris-predictor-00002", 25, ""),
        ("iris-predictor-00001", 75, "prev"),
    ]


def test_a_canary_with_tag_routing_tags_the_latest() -> None:
    tags = {"serving.kserve.io/enable-tag-routing": "true"}
    first = translate([isvc(SKLEARN, annotations=tags)])
    doc = isvc(
        {"xgboost": {"storageUri": "s3://m/x.json"}, "canaryTrafficPercent": 30}, annotations=tags
    )
    spec = parse_spec(translate([doc], first.history).spec)
    assert split(spec) == [
        ("iris-predictor-00002", 30, "latest"),
        ("iris-predictor-00001", 70, "prev"),
    ]


def test_without_history_a_canary_has_all_the_traffic() -> None:
    doc = isvc({**SKLEARN, "canaryTrafficPercent": 10})
    assert split(parse_spec(translate([doc]).spec)) == [("iris-predictor-00001", 100, "")]
    assert split(parse_spec(translate([doc], History()).spec)) == [
        ("iris-predictor-00001", 100, "")
    ]


def test_the_same_predictor_keeps_its_revision_number() -> None:
    """A revision is numbered by what it runs: changing only the canary percent, or going back
    to an earlier predictor, creates no new revision."""
    a, b = isvc(SKLEARN), isvc({"onnx": {"storageUri": "s3://m/iris.onnx"}})
    h = translate([a]).history
    h = translate([b], h).history
    [svc] = parse_spec(translate([a], h).spec).services
    assert [r.name for r in svc.revisions] == ["iris-predictor-00001"]


async def test_zeroserve_up_reloads_apply_the_canary(tmp_path: Path) -> None:
    """The local runtime's reload path keeps the history: routes and revisions follow the edit."""
    from zeroserve.runtime import LocalRuntime, RuntimeSettings

    def version(n: int, canary: int | None = None) -> dict[str, Any]:
        c = {"command": ["python", "-c", "pass"], "env": [{"name": "V", "value": str(n)}]}
        p: dict[str, Any] = {"containers": [c], "minReplicas": 0}
        if canary is not None:
            p["canaryTrafficPercent"] = canary
        return isvc(p)

    path = write(tmp_path / "iris.yaml", version(1))
    rt = LocalRuntime(path, RuntimeSettings(watch_spec_s=0))
    write(path, version(2, canary=20))
    assert rt.reload() is True
    route = rt.routes.current()[("default", "iris")]
    assert [(t.revision, t.percent) for t in route.traffic] == [
        ("iris-predictor-00002", 20),
        ("iris-predictor-00001", 80),
    ]
    assert sorted(k.name for k in rt.revisions.current()) == [
        "iris-predictor-00001",
        "iris-predictor-00002",
    ]
    write(path, version(2))
    assert rt.reload() is True
    assert [k.name for k in rt.revisions.current()] == ["iris-predictor-00002"]


EXAMPLES = sorted(REPO.glob("examples/*isvc*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_examples_validate_and_their_models_exist(path: Path) -> None:
    spec = load(path)
    assert spec.services
    for rev in spec.revisions().values():
        assert rev.predictor is not None
        # plain paths, relative to where zeroserve runs: the repository's root
        assert (REPO / rev.predictor.storage_uri).is_file(), rev.predictor.storage_uri


def test_the_examples_canary_sequence(tmp_path: Path) -> None:
    """docs/configuration.md's walk-through, with the two example files."""
    path = tmp_path / "iris.yaml"
    path.write_text((REPO / "examples" / "iris-isvc.yaml").read_text())
    reader = SpecReader(path)
    reader.load()
    path.write_text((REPO / "examples" / "iris-canary-isvc.yaml").read_text())
    [svc] = reader.load().services
    assert [(t.revision, t.percent, t.tag) for t in svc.traffic] == [
        ("iris-predictor-00002", 10, "latest"),
        ("iris-predictor-00001", 90, "prev"),
    ]
    new = svc.revision("iris-predictor-00002")
    assert new is not None
    assert new.predictor is not None
    assert new.predictor.format == "onnx"

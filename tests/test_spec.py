"""The spec file format: parsing, defaults, and errors that name the field (cluster.spec_loader)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from autoscaler.config import AutoscalerConfig
from autoscaler.resolve import resolve
from cluster.spec import Predictor, ReadinessProbe, Revision, RevisionKey, Service, TrafficTarget
from cluster.spec_loader import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
A = "autoscaling.knative.dev/"


def minimal() -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "iris",
                "revisions": [
                    {"name": "iris-v1", "command": ["python", "-m", "examples.iris_server"]}
                ],
            }
        ]
    }


def two_revisions() -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "iris",
                "revisions": [
                    {"name": "v1", "command": ["a"]},
                    {"name": "v2", "command": ["b"]},
                ],
                "traffic": [
                    {"revisionName": "v1", "percent": 90, "tag": "old"},
                    {"revisionName": "v2", "percent": 10, "tag": "new"},
                ],
            }
        ]
    }


def test_minimal_spec_gets_defaults_and_full_traffic() -> None:
    spec = parse_spec(minimal())
    assert spec.domain == "example.com"
    assert dict(spec.config) == {}
    assert spec.services == (
        Service(
            namespace="default",
            name="iris",
            revisions=(
                Revision(
                    namespace="default",
                    service="iris",
                    name="iris-v1",
                    command=("python", "-m", "examples.iris_server"),
                ),
            ),
            traffic=(TrafficTarget(revision="iris-v1", percent=100),),
        ),
    )


def test_full_revision() -> None:
    data: dict[str, Any] = {
        "domain": "models.local",
        "config": {
            "stable-window": "30s",
            "enable-scale-to-zero": False,
            "container-concurrency-target-percentage": 70,
            "max-scale-up-rate": 2.5,
            "allow-zero-initial-scale": True,
        },
        "services": [
            {
                "name": "iris",
                "namespace": "ml",
                "revisions": [
                    {
                        "name": "iris-v1",
                        "containerConcurrency": 4,
                        "timeoutSeconds": 30,
                        "responseStartTimeoutSeconds": 5,
                        "idleTimeoutSeconds": 2.5,
                        "annotations": {
                            A + "min-scale": 1,
                            A + "initial-scale": "0",
                            A + "window": "30s",
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": 9000},
                            "periodSeconds": 1,
                            "timeoutSeconds": 2,
                            "successThreshold": 2,
                            "failureThreshold": 5,
                        },
                        "command": ["sleep", 5],
                        "env": {"A": "x", "N": 3},
                        "image": "ghcr.io/x/iris:1",
                        "port": 9000,
                    }
                ],
                "traffic": [{"revisionName": "iris-v1", "percent": 100, "tag": "current"}],
            }
        ],
    }
    spec = parse_spec(data)
    assert spec.domain == "models.local"
    assert dict(spec.config) == {
        "stable-window": "30s",
        "enable-scale-to-zero": "false",
        "container-concurrency-target-percentage": "70",
        "max-scale-up-rate": "2.5",
        "allow-zero-initial-scale": "true",
    }
    rev = spec.revisions()[RevisionKey("ml", "iris-v1")]
    assert rev == Revision(
        namespace="ml",
        service="iris",
        name="iris-v1",
        container_concurrency=4,
        timeout_s=30.0,
        response_start_timeout_s=5.0,
        idle_timeout_s=2.5,
        annotations={A + "min-scale": "1", A + "initial-scale": "0", A + "window": "30s"},
        readiness_probe=ReadinessProbe(
            kind="http",
            path="/ready",
            port=9000,
            period_s=1.0,
            timeout_s=2.0,
            success_threshold=2,
            failure_threshold=5,
        ),
        command=("sleep", "5"),
        env={"A": "x", "N": "3"},
        image="ghcr.io/x/iris:1",
        user_port=9000,
    )
    assert spec.services[0].traffic == (
        TrafficTarget(revision="iris-v1", percent=100, tag="current"),
    )
    # The coerced config is what the autoscaler parses.
    config = AutoscalerConfig.from_data(spec.config)
    assert (config.stable_window_s, config.enable_scale_to_zero, config.max_scale_up_rate) == (
        30.0,
        False,
        2.5,
    )
    assert resolve(config, rev).bounds.initial_scale == 0


def test_tcp_probe_and_image_only() -> None:
    data = minimal()
    data["services"][0]["revisions"][0] = {
        "name": "iris-v1",
        "image": "x",
        "readinessProbe": {"tcpSocket": {"port": 8081}},
    }
    rev = parse_spec(data).services[0].revisions[0]
    assert rev.readiness_probe == ReadinessProbe(kind="tcp", port=8081)
    assert rev.command == ()


def test_two_revisions_traffic_and_tags() -> None:
    svc = parse_spec(two_revisions()).services[0]
    assert svc.traffic == (
        TrafficTarget(revision="v1", percent=90, tag="old"),
        TrafficTarget(revision="v2", percent=10, tag="new"),
    )


def test_same_revision_names_in_other_namespaces() -> None:
    data = minimal()
    other = copy.deepcopy(data["services"][0])
    other["namespace"] = "other"
    data["services"].append(other)
    assert len(parse_spec(data).revisions()) == 2


def _set(path: str, value: object) -> Any:
    """A copy of two_revisions() with the value at a dotted path ('services.0.name') set (or deleted)."""
    data = two_revisions()
    *parents, last = path.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()

INVALID = [
    pytest.param(
        _set("services.0.traffic.0.percent", 80),
        "services[0].traffic: percents sum to 90, must be 100",
        id="sum",
    ),
    pytest.param(
        _set("services.0.traffic.1.revisionName", "v3"),
        "services[0].traffic[1].revisionName = 'v3': no such revision",
        id="no-such-revision",
    ),
    pytest.param(
        _set("services.0.traffic.1.revisionName", _DELETE),
        "services[0].traffic[1].revisionName",
        id="rev-missing",
    ),
    pytest.param(
        _set("services.0.traffic.0.percent", 101),
        "services[0].traffic[0].percent = 101",
        id="percent-over-100",
    ),
    pytest.param(
        _set("services.0.traffic.0.percent", -1),
        "services[0].traffic[0].percent = -1",
        id="percent-negative",
    ),
    pytest.param(
        _set("services.0.traffic.0.percent", 89.5),
        "services[0].traffic[0].percent = 89.5",
        id="percent-float",
    ),
    pytest.param(
        _set("services.0.traffic.1.tag", "old"),
        "services[0].traffic[1].tag = 'old': duplicate tag",
        id="dup-tag",
    ),
    pytest.param(
        _set("services.0.traffic.1.tag", "New"),
        "services[0].traffic[1].tag = 'New'",
        id="tag-not-label",
    ),
    pytest.param(
        _set("services.0.traffic.1.tag", "t" * 59),
        "services[0].traffic[1].tag",
        id="tagged-host-too-long",
    ),
    pytest.param(
        _set("services.0.traffic.0.weight", 1),
        "services[0].traffic[0]: unknown field 'weight'",
        id="traffic-unknown",
    ),
    pytest.param(
        _set("services.0.traffic", _DELETE),
        "services[0].traffic: required",
        id="traffic-needed-for-two",
    ),
    pytest.param(_set("services.0.traffic", []), "services[0].traffic", id="traffic-empty"),
    pytest.param(
        _set("services.0.revisions.1.name", "v1"),
        "services[0].revisions[1].name = 'v1': duplicate revision",
        id="dup-rev",
    ),
    pytest.param(
        _set("services.0.revisions.1.name", "V2"),
        "services[0].revisions[1].name = 'V2'",
        id="rev-name-upper",
    ),
    pytest.param(
        _set("services.0.revisions.1.name", "-v2"),
        "services[0].revisions[1].name = '-v2'",
        id="rev-name-dash",
    ),
    pytest.param(
        _set("services.0.revisions.1.name", "v" * 64),
        "services[0].revisions[1].name",
        id="rev-name-too-long",
    ),
    pytest.param(
        _set("services.0.revisions.1.name", _DELETE),
        "services[0].revisions[1].name: required",
        id="rev-no-name",
    ),
    pytest.param(
        _set("services.0.revisions", []), "services[0].revisions: required", id="no-revisions"
    ),
    pytest.param(
        _set("services.0.name", "iris_1"), "services[0].name = 'iris_1'", id="svc-name-underscore"
    ),
    pytest.param(_set("services.0.name", _DELETE), "services[0].name: required", id="svc-no-name"),
    pytest.param(
        _set("services.0.namespace", "Prod"), "services[0].namespace = 'Prod'", id="ns-not-label"
    ),
    pytest.param(
        _set("services.0.replicas", 3), "services[0]: unknown field 'replicas'", id="svc-unknown"
    ),
    pytest.param(
        _set("services.0.revisions.0.containerConcurrency", -1),
        "services[0].revisions[0].containerConcurrency = -1",
        id="cc-negative",
    ),
    pytest.param(
        _set("services.0.revisions.0.containerConcurrency", "1"),
        "services[0].revisions[0].containerConcurrency = '1'",
        id="cc-string",
    ),
    pytest.param(
        _set("services.0.revisions.0.containerConcurrency", True),
        "services[0].revisions[0].containerConcurrency = True",
        id="cc-bool",
    ),
    pytest.param(
        _set("services.0.revisions.0.timeoutSeconds", 0),
        "services[0].revisions[0].timeoutSeconds = 0",
        id="timeout-zero",
    ),
    pytest.param(
        _set("services.0.revisions.0.idleTimeoutSeconds", -1),
        "services[0].revisions[0].idleTimeoutSeconds = -1",
        id="idle-negative",
    ),
    pytest.param(
        _set("services.0.revisions.0.port", 70000),
        "services[0].revisions[0].port = 70000",
        id="port-range",
    ),
    pytest.param(
        _set("services.0.revisions.0.containerconcurrency", 1),
        "services[0].revisions[0]: unknown field 'containerconcurrency'",
        id="rev-unknown",
    ),
    pytest.param(
        _set("services.0.revisions.0.command", "python -m x"),
        "services[0].revisions[0].command",
        id="command-string",
    ),
    pytest.param(
        _set("services.0.revisions.0.command", ["python", None]),
        "services[0].revisions[0].command[1] = None",
        id="command-none",
    ),
    pytest.param(
        _set("services.0.revisions.0.command", _DELETE),
        "services[0].revisions[0]: needs a command",
        id="no-command-no-image",
    ),
    pytest.param(
        _set("services.0.revisions.0.image", 3),
        "services[0].revisions[0].image = 3",
        id="image-not-string",
    ),
    pytest.param(
        _set("services.0.revisions.0.env", {"1X": "a"}),
        "services[0].revisions[0].env = '1X'",
        id="env-name",
    ),
    pytest.param(
        _set("services.0.revisions.0.env", {"X": [1]}),
        "services[0].revisions[0].env.X = [1]",
        id="env-list",
    ),
    pytest.param(
        _set("services.0.revisions.0.env", ["X=1"]),
        "services[0].revisions[0].env = ['X=1']",
        id="env-not-map",
    ),
    pytest.param(
        _set("services.0.revisions.0.annotations", {A + "window": "3s"}),
        "services[0].revisions[0].annotations: autoscaling.knative.dev/window = 3s: must be within [6s, 1h]",
        id="bad-annotation",
    ),
    pytest.param(
        _set("services.0.revisions.0.annotations", {A + "minScale": -1}),
        "services[0].revisions[0].annotations: autoscaling.knative.dev/minScale = -1",
        id="bad-annotation-alias-number",
    ),
    pytest.param(
        _set("services.0.revisions.0.annotations", {A + "initial-scale": 0}),
        "services[0].revisions[0].annotations: autoscaling.knative.dev/initial-scale = 0",
        id="initial-zero-without-allow-zero-in-config",
    ),
    pytest.param(
        _set("services.0.revisions.0.annotations", {A + "class": "hpa.autoscaling.knative.dev"}),
        "services[0].revisions[0].annotations: autoscaling.knative.dev/class = hpa.autoscaling.knative.dev",
        id="hpa-class",
    ),
    pytest.param(
        _set("services.0.revisions.0.annotations", {A + "target": None}),
        "services[0].revisions[0].annotations.autoscaling.knative.dev/target = None",
        id="annotation-null",
    ),
    pytest.param(
        _set("services.0.revisions.0.readinessProbe", {"httpGet": {"path": "ready"}}),
        "services[0].revisions[0].readinessProbe.httpGet.path = 'ready'",
        id="probe-path",
    ),
    pytest.param(
        _set("services.0.revisions.0.readinessProbe", {"httpGet": {}, "tcpSocket": {}}),
        "services[0].revisions[0].readinessProbe: needs exactly one of httpGet or tcpSocket",
        id="probe-two-handlers",
    ),
    pytest.param(
        _set("services.0.revisions.0.readinessProbe", {"periodSeconds": 1}),
        "services[0].revisions[0].readinessProbe: needs exactly one",
        id="probe-no-handler",
    ),
    pytest.param(
        _set(
            "services.0.revisions.0.readinessProbe",
            {"tcpSocket": {"port": 1}, "failureThreshold": 0},
        ),
        "services[0].revisions[0].readinessProbe.failureThreshold = 0",
        id="probe-threshold",
    ),
    pytest.param(
        _set("services.0.revisions.0.readinessProbe", {"exec": {"command": ["true"]}}),
        "services[0].revisions[0].readinessProbe: unknown field 'exec'",
        id="probe-exec-unknown",
    ),
    pytest.param(
        _set(
            "services.0.revisions.0.readinessProbe", {"httpGet": {"path": "/", "scheme": "HTTPS"}}
        ),
        "services[0].revisions[0].readinessProbe.httpGet: unknown field 'scheme'",
        id="probe-scheme-unknown",
    ),
    pytest.param(_set("domain", "Example.com"), "domain = 'Example.com'", id="domain"),
    pytest.param(
        _set("config", {"stable-window": None}), "config.stable-window = None", id="config-null"
    ),
    pytest.param(
        _set("config", ["stable-window"]), "config = ['stable-window']", id="config-not-map"
    ),
    pytest.param(_set("kind", "Service"), "spec: unknown field 'kind'", id="top-unknown"),
    pytest.param(
        _set("services", {"iris": {}}), "services: required: a list", id="services-not-list"
    ),
    pytest.param(
        _set("services.0", "iris"), "services[0]: must be a mapping", id="service-not-map"
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_names_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_duplicate_services() -> None:
    data = minimal()
    data["services"].append(copy.deepcopy(data["services"][0]))
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.errors[0].startswith(
        "services[1].name = 'iris': duplicate service default/iris (also services[0])"
    )
    # Their revisions collide too (revisions are keyed by namespace/name).
    assert info.value.errors[1].startswith(
        "services[1].revisions[0].name = 'iris-v1': duplicate revision"
    )


def test_revisions_of_different_services_collide_in_one_namespace() -> None:
    data = minimal()
    other = copy.deepcopy(data["services"][0])
    other["name"] = "other"
    data["services"].append(other)
    with pytest.raises(
        SpecError, match=re.escape("services[1].revisions[0].name = 'iris-v1': duplicate revision")
    ):
        parse_spec(data)


def test_errors_are_collected() -> None:
    data = _set("services.0.revisions.0.containerConcurrency", -1)
    data["services"][0]["traffic"][1]["revisionName"] = "v3"
    data["domain"] = "BAD"
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert len(info.value.errors) == 3
    assert str(info.value) == "; ".join(info.value.errors)


def test_broken_revision_does_not_also_break_its_traffic() -> None:
    data = _set("services.0.revisions.1.containerConcurrency", -5)
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.errors == (
        "services[0].revisions[1].containerConcurrency = -5: must be at least 0",
    )


def test_config_limits_are_used_for_annotations() -> None:
    data = _set(
        "services.0.revisions.0.annotations", {A + "initial-scale": "0", A + "max-scale": "5"}
    )
    data["config"] = {"allow-zero-initial-scale": "true", "max-scale-limit": 5}
    parse_spec(data)
    data["config"]["max-scale-limit"] = "4"
    with pytest.raises(SpecError, match=re.escape(A + "max-scale = 5: must be within [1, 4]")):
        parse_spec(data)


def test_load_spec_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services:\n  - name: Iris\n    revisions: [{name: v1, command: [x]}]\n")
    with pytest.raises(SpecError, match=re.escape(f"{path}: services[0].name = 'Iris'")):
        load_spec(path)
    path.write_text("services: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    path.write_text("- a\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(path)


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"iris.yaml", "canary.yaml", "gpu-emulated.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_and_resolves(path: Path) -> None:
    # either form: a native spec, or InferenceService documents (cluster/inferenceservice.py)
    from cluster.inferenceservice import load_file

    spec, _ = load_file(path)
    config = AutoscalerConfig.from_data(spec.config)
    assert spec.services
    for rev in spec.revisions().values():
        resolve(config, rev)


def test_iris_example_is_what_make_run_needs() -> None:
    spec = load_spec(ROOT / "examples" / "iris.yaml")
    (svc,) = spec.services
    (rev,) = svc.revisions
    assert (svc.name, rev.name) == ("iris", "iris-v1")
    assert rev.command == ("python", "-m", "examples.iris_server")
    assert rev.readiness_probe.kind == "http"
    assert rev.readiness_probe.path == "/v2/health/ready"


def test_canary_example_splits_90_10_with_tags() -> None:
    (svc,) = load_spec(ROOT / "examples" / "canary.yaml").services
    assert [(t.revision, t.percent, bool(t.tag)) for t in svc.traffic] == [
        ("iris-v1", 90, True),
        ("iris-v2", 10, True),
    ]


def test_gpu_example_has_cc_1() -> None:
    (svc,) = load_spec(ROOT / "examples" / "gpu-emulated.yaml").services
    (rev,) = svc.revisions
    assert rev.container_concurrency == 1
    assert rev.command == ("python", "-m", "examples.gpu_emulator")


# -- config: checked with the autoscaler's rules when a checker is given (issue 19, item 5) -----


def _config_errors(data: Any) -> tuple[str, ...]:
    from autoscaler.config import ConfigError

    try:
        AutoscalerConfig.from_data(data)
    except ConfigError as exc:
        return exc.errors
    return ()


def test_config_is_checked_by_the_given_rules_with_the_other_errors() -> None:
    data = minimal()
    data["config"] = {"stable-window": "3s", "max-scale-up-rate": 0.5}
    parse_spec(data)  # no checker: cluster cannot know the autoscaler's rules
    data["domain"] = "BAD"
    with pytest.raises(SpecError) as info:
        parse_spec(data, check_config=_config_errors)
    assert info.value.errors == (
        "domain = 'BAD': must be a DNS name of DNS-1123 labels (e.g. example.com)",
        "config.stable-window = 3s: must be within [6s, 1h]",
        "config.max-scale-up-rate = 0.5: must be greater than 1",
    )


def test_load_spec_passes_the_checker_and_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "config: {stable-window: 3s}\n"
        "services:\n  - name: iris\n    revisions: [{name: v1, command: [x]}]\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(path, check_config=_config_errors)
    assert info.value.errors == (f"{path}: config.stable-window = 3s: must be within [6s, 1h]",)


# -- predictor: the built-in model server ------------------------------------------------------

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def predictor_spec(predictor: object, **revision: object) -> dict[str, Any]:
    rev: dict[str, Any] = {"name": "iris-v1", "predictor": predictor, **revision}
    return {"services": [{"name": "iris", "revisions": [rev]}]}


def test_predictor_becomes_the_model_server_command_and_its_health_probe() -> None:
    uri = "s3://models/iris/model.joblib"
    spec = parse_spec(predictor_spec({"format": "sklearn", "storageUri": uri}))
    (rev,) = spec.revisions().values()
    assert rev.predictor == Predictor(format="sklearn", storage_uri=uri)
    assert rev.command == (
        "python", "-m", "modelserver", "--name", "iris", "--format", "sklearn", "--model", uri,
    )  # fmt: skip
    assert rev.readiness_probe == ReadinessProbe(kind="http", path="/v2/health/ready")


def test_a_pinned_predictor_passes_its_digest_lowercased() -> None:
    data = predictor_spec(
        {"format": "onnx", "storageUri": "http://127.0.0.1:1/m.onnx", "sha256": SHA.upper()}
    )
    (rev,) = parse_spec(data).revisions().values()
    assert rev.predictor is not None
    assert rev.predictor.sha256 == SHA
    assert "--sha256" not in rev.command
    assert dict(rev.env) == {"ZEROSERVE_MODEL_SHA256": SHA}


def test_a_predictor_keeps_a_written_probe_and_the_other_fields() -> None:
    data = predictor_spec(
        {"format": "xgboost", "storageUri": "/models/xgb.json"},
        readinessProbe={"tcpSocket": {}},
        containerConcurrency=4,
        env={"OMP_NUM_THREADS": "1"},
    )
    (rev,) = parse_spec(data).revisions().values()
    assert rev.readiness_probe == ReadinessProbe(kind="tcp")
    assert rev.container_concurrency == 4
    assert dict(rev.env) == {"OMP_NUM_THREADS": "1"}
    assert rev.command[rev.command.index("--model") + 1] == "/models/xgb.json"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://models/iris/model.joblib",
        "http://127.0.0.1:8000/model.joblib",
        "https://example.com/models/iris.tar.gz",
        "file:///srv/models/iris.joblib",
        "file://localhost/srv/models/iris.joblib",
        "models/iris.joblib",
        "/srv/models/iris.joblib",
    ],
)
def test_storage_uris_accepted(uri: str) -> None:
    (rev,) = (
        parse_spec(predictor_spec({"format": "sklearn", "storageUri": uri})).revisions().values()
    )
    assert rev.predictor is not None
    assert rev.predictor.storage_uri == uri


P = "services[0].revisions[0]"
FORMATS_RULE = "must be one of sklearn, xgboost, lightgbm, onnx, pytorch"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            predictor_spec({"format": "tensorflow", "storageUri": "s3://b/k"}),
            f"{P}.predictor.format = 'tensorflow': {FORMATS_RULE}",
            id="format-unknown",
        ),
        pytest.param(
            predictor_spec({"storageUri": "s3://b/k"}),
            f"{P}.predictor.format: required: one of sklearn,",
            id="format-missing",
        ),
        pytest.param(
            predictor_spec({"format": "onnx"}),
            f"{P}.predictor.storageUri: required",
            id="uri-missing",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "gs://models/m.onnx"}),
            f"{P}.predictor.storageUri = 'gs://models/m.onnx': scheme 'gs' is not supported",
            id="uri-scheme",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://models"}),
            f"{P}.predictor.storageUri = 's3://models': an s3 URI must be s3://<bucket>/<key>",
            id="uri-s3-no-key",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "http:///m.onnx"}),
            f"{P}.predictor.storageUri = 'http:///m.onnx': an http URI must name a host",
            id="uri-http-no-host",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "file://models/m.onnx"}),
            f"{P}.predictor.storageUri = 'file://models/m.onnx': a file URI must be file:///",
            id="uri-file-relative",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": ""}),
            f"{P}.predictor.storageUri = '': must be a non-empty string",
            id="uri-empty",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": ["s3://b/k"]}),
            f"{P}.predictor.storageUri = ['s3://b/k']: must be a non-empty string",
            id="uri-not-string",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://b/k", "sha256": "abc123"}),
            f"{P}.predictor.sha256 = 'abc123': must be 64 hexadecimal digits",
            id="sha256-short",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://b/k", "sha256": "g" * 64}),
            f"{P}.predictor.sha256 = '{'g' * 64}': must be 64 hexadecimal digits",
            id="sha256-not-hex",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://b/k", "sha256": 12345}),
            f"{P}.predictor.sha256 = 12345: must be 64 hexadecimal digits, quoted",
            id="sha256-yaml-number",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://b/k", "storageURI": "x"}),
            f"{P}.predictor: unknown field 'storageURI' (known: format, storageUri, sha256)",
            id="predictor-unknown-field",
        ),
        pytest.param(
            predictor_spec("s3://b/k"),
            f"{P}.predictor = 's3://b/k': must be a mapping (format, storageUri, sha256)",
            id="predictor-not-mapping",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://b/k"}, command=["python"]),
            f"{P}: command and predictor are exclusive",
            id="command-and-predictor",
        ),
        pytest.param(
            predictor_spec({"format": "onnx", "storageUri": "s3://b/k"}, image="ghcr.io/x/y:1"),
            f"{P}: image and predictor are exclusive",
            id="image-and-predictor",
        ),
        pytest.param(
            {"services": [{"name": "iris", "revisions": [{"name": "iris-v1"}]}]},
            f"{P}: needs a command (local runtime), an image (Kubernetes) or a predictor",
            id="neither",
        ),
    ],
)
def test_invalid_predictor_names_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_predictor_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "services:\n"
        "  - name: iris\n"
        "    revisions:\n"
        "      - name: iris-v1\n"
        "        predictor:\n"
        "          format: sklearn\n"
        "          storageUri: s3://models/iris/model.joblib\n"
        f"          sha256: '{SHA}'\n"
    )
    (rev,) = load_spec(path).revisions().values()
    assert rev.predictor == Predictor(
        format="sklearn", storage_uri="s3://models/iris/model.joblib", sha256=SHA
    )

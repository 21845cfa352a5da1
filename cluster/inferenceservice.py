"""KServe ``InferenceService`` files (``serving.kserve.io/v1beta1``) translated onto the native spec.

A file of InferenceService documents (several per file, ``---``) becomes the mapping that
:func:`cluster.spec_loader.parse_spec` reads: one service per document, named after it (the model
name in ``/v1/models/<name>`` and ``/v2/models/<name>``), with revisions named as KServe names its
predictor's revisions (``<name>-predictor-00001``). docs/configuration.md, "KServe
InferenceService files", has the mapping table; in short:

| InferenceService | native spec |
| --- | --- |
| ``spec.predictor.{sklearn,...}.storageUri``, ``spec.predictor.model`` | ``predictor: {format, storageUri}`` |
| ``spec.predictor.containers[0]`` | ``command`` (+ args), ``env``, ``image``, ``port``, ``readinessProbe`` |
| ``minReplicas`` (default 1, as in KServe), ``maxReplicas`` | ``autoscaling.knative.dev/min-scale``, ``max-scale`` |
| ``scaleTarget``, ``scaleMetric`` | ``autoscaling.knative.dev/target``, ``metric`` |
| ``containerConcurrency``, ``timeout`` | ``containerConcurrency``, ``timeoutSeconds`` (+ response start) |
| ``canaryTrafficPercent`` | ``traffic``: the new revision gets it, the last rolled-out one the rest (tag ``prev``) |

The canary needs memory across reads of the file: a revision is numbered by a digest of what it
runs (a new number whenever the predictor changes), and the last rolled-out revision (the last one
that got 100 %) is kept in :class:`History`, which the caller keeps between reloads and passes
back. :func:`translate` is pure: documents and history in, spec mapping and new history out.
Without history (``zeroserve validate``, ``zeroserve render``) each service has one revision,
``-00001``, with all the traffic.

``spec.predictor.batcher`` becomes the ``batching.zeroserve.dev/*`` annotations (docs/batching.md).
An InferenceService annotated ``shadow.zeroserve.dev/of: <name>`` (and optionally
``shadow.zeroserve.dev/percent``) becomes a shadow revision of that one (cluster.shadow,
docs/shadow.md).

``spec.predictor.logger`` becomes the ``logger.zeroserve.dev/*`` annotations (docs/payload-logging.md).

Fields that KServe has and zeroserve does not yet (``spec.transformer``,
``spec.predictor.tensorflow``...) are errors saying so, and so are unknown fields; every error starts
with the document and the field's path: ``InferenceService default/iris: spec.transformer: not
supported yet``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

import yaml

from cluster.batching import GROUP as BATCHING_GROUP
from cluster.batching import MAX_BATCH_SIZE as BATCH_MAX_SIZE
from cluster.batching import MAX_LATENCY as BATCH_MAX_LATENCY
from cluster.payload_logging import GROUP as LOGGER_GROUP
from cluster.payload_logging import logger_annotations
from cluster.shadow import attach_shadows, isvc_shadow
from cluster.spec import Spec
from cluster.spec_loader import DEFAULT_NAMESPACE, ConfigCheck, SpecError, load_spec, parse_spec

API_VERSION: Final = "serving.kserve.io/v1beta1"
KIND: Final = "InferenceService"
FORMATS: Final = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch")
"""The model formats of the built-in model server, spelt as KServe spells them."""
RUNTIMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        # ``runtime: zeroserve`` names the built-in server; KServe's own runtimes for the
        # formats whose files it loads alike are accepted as names for it.
        "zeroserve": FORMATS,
        "kserve-sklearnserver": ("sklearn",),
        "kserve-xgbserver": ("xgboost",),
        "kserve-lgbserver": ("lightgbm",),
    }
)
TAG_ROUTING: Final = "serving.kserve.io/enable-tag-routing"
DEPLOYMENT_MODE: Final = "serving.kserve.io/deploymentMode"
AUTOSCALING_PREFIX: Final = "autoscaling.knative.dev/"
MIN_SCALE: Final = AUTOSCALING_PREFIX + "min-scale"
MAX_SCALE: Final = AUTOSCALING_PREFIX + "max-scale"
TARGET: Final = AUTOSCALING_PREFIX + "target"
METRIC: Final = AUTOSCALING_PREFIX + "metric"
DEFAULT_MIN_REPLICAS: Final = 1  # KServe's constants.DefaultMinReplicas
_REVISION_SUFFIX = "-predictor-00001"
_MAX_NAME = 63 - len(_REVISION_SUFFIX)  # the revision name is a DNS label: 47

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Each object's fields: supported, KServe's that zeroserve does not support yet, and ignored ones
# (server-written metadata, so that `kubectl get isvc -o yaml` output reads). Anything else is
# an unknown field.
_TOP = ("apiVersion", "kind", "metadata", "spec")
_TOP_IGNORED = ("status",)
_METADATA = ("name", "namespace", "annotations", "labels")
_METADATA_IGNORED = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "finalizers",
    "selfLink",
)
_METADATA_LATER = ("generateName", "ownerReferences", "deletionTimestamp")
_SPEC = ("predictor",)
_SPEC_LATER = ("transformer", "explainer")
_IMPLEMENTATIONS = (*FORMATS, "model", "containers")
_PREDICTOR = (
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "batcher",
    "logger",
    "annotations",
    "labels",
    *_IMPLEMENTATIONS,
)
_PREDICTOR_LATER = (
    "tensorflow",
    "triton",
    "huggingface",
    "pmml",
    "paddle",
    "xgboostserver",
    "autoScaling",
    "deploymentStrategy",
    "workerSpec",
    "storageUris",
    "serviceAccountName",
    "nodeSelector",
    "nodeName",
    "tolerations",
    "affinity",
    "volumes",
    "initContainers",
    "imagePullSecrets",
    "securityContext",
    "priorityClassName",
    "runtimeClassName",
    "schedulerName",
    "hostNetwork",
    "hostIPC",
    "hostPID",
    "dnsPolicy",
    "dnsConfig",
    "topologySpreadConstraints",
    "enableServiceLinks",
    "automountServiceAccountToken",
    "terminationGracePeriodSeconds",
)
_CONTAINER_LATER = (
    "livenessProbe",
    "startupProbe",
    "volumeMounts",
    "volumeDevices",
    "workingDir",
    "imagePullPolicy",
    "securityContext",
    "envFrom",
    "lifecycle",
    "stdin",
    "tty",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "resizePolicy",
    "restartPolicy",
)
_FRAMEWORK = ("storageUri", "protocolVersion", "name", "env", "resources")
_FRAMEWORK_LATER = (
    "runtimeVersion",
    "storage",
    "image",
    "command",
    "args",
    "ports",
    "readinessProbe",
    *_CONTAINER_LATER,
)
_MODEL = ("modelFormat", "runtime", *_FRAMEWORK)
_CONTAINER = ("name", "image", "command", "args", "env", "ports", "resources", "readinessProbe")
_PROBE = (
    "httpGet",
    "tcpSocket",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
)
_PROBE_LATER = ("initialDelaySeconds", "exec", "grpc", "terminationGracePeriodSeconds")
_PROTOCOLS = ("v1", "v2")  # the built-in server speaks both on one port; grpc-v2: not yet


# -- history: what the canary needs to remember between reads ---------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RolledOut:
    """A revision that got 100 % of its service's traffic, with its native body, since the file
    that described it may have changed since."""

    name: str
    body: Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceHistory:
    """One service's revisions so far: ``numbers`` maps a revision body's digest to its number;
    ``rolled_out`` is the latest revision that got 100 %, ``previous`` the one before it (KServe's
    ``latestRolledoutRevision`` and ``previousRolledoutRevision``)."""

    numbers: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    rolled_out: RolledOut | None = None
    previous: RolledOut | None = None


@dataclass(frozen=True, slots=True)
class History:
    """Every service's :class:`ServiceHistory`, by (namespace, name)."""

    services: Mapping[tuple[str, str], ServiceHistory] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Translation:
    """What :func:`translate` returns: the native spec mapping (for ``parse_spec``), the history
    to pass to the next call, and per revision (namespace, name) the container fields that only
    Kubernetes uses (``resources``; a custom container's ``command``/``args``) for
    ``zeroserve render``."""

    spec: Mapping[str, object]
    history: History
    kube: Mapping[tuple[str, str], Mapping[str, object]]


# -- reading a file ------------------------------------------------------------------------------


def read_documents(text: str, source: str) -> list[object]:
    """The YAML documents of a file (empty ones dropped); :class:`SpecError` if not YAML."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError((f"{source}: not valid YAML: {exc}",)) from exc


def is_inferenceservice_file(docs: Sequence[object], source: str) -> bool:
    """True for a file of Kubernetes-style documents (``apiVersion``/``kind``), False for a native
    spec; :class:`SpecError` for a file that mixes both."""
    typed = [isinstance(d, Mapping) and ("apiVersion" in d or "kind" in d) for d in docs]
    if not any(typed):
        return False
    if not all(typed):
        n = typed.index(False) + 1
        raise SpecError(
            (
                f"{source}: document {n} is a native spec (no apiVersion/kind) in a file of "
                f"{KIND} documents: a file holds one form or the other",
            )
        )
    return True


def load_file(
    path: str | os.PathLike[str],
    *,
    history: History | None = None,
    check_config: ConfigCheck | None = None,
) -> tuple[Spec, Translation | None]:
    """Read a spec file of either form; the :class:`Translation` is None for a native spec.

    Errors (:class:`SpecError`) are prefixed by the file's name. ``history`` is the previous
    translation's (None: no history, as in ``zeroserve validate``).
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8") as f:
        text = f.read()
    docs = read_documents(text, name)
    if not is_inferenceservice_file(docs, name):
        return load_spec(path, check_config=check_config), None
    try:
        tr = translate(docs, history)
    except SpecError as exc:
        raise SpecError(tuple(f"{name}: {e}" for e in exc.errors)) from exc
    try:
        spec = parse_spec(tr.spec, check_config=check_config)
    except SpecError as exc:
        raise SpecError(tuple(f"{name}: {_isvc_error(e, tr.spec)}" for e in exc.errors)) from exc
    return spec, tr


# -- translation -----------------------------------------------------------------------------------


class _Doc:
    """One document's errors, each prefixed ``InferenceService <ns>/<name>: ``."""

    def __init__(self, prefix: str, out: list[str]) -> None:
        self.prefix = prefix
        self.out = out
        self.count = 0

    def add(self, path: str, problem: str) -> None:
        self.out.append(f"{self.prefix}: {path}: {problem}")
        self.count += 1

    def value(self, path: str, value: object, problem: str) -> None:
        self.add(f"{path} = {value!r}", problem)

    def fields(
        self,
        raw: Mapping[Any, object],
        path: str,
        known: Sequence[str],
        later: Sequence[str] = (),
        ignored: Sequence[str] = (),
    ) -> None:
        for key in raw:
            where = f"{path}.{key}" if path else str(key)
            if key in later:
                self.add(where, "not supported yet")
            elif key not in known and key not in ignored:
                self.add(where, f"unknown field (known: {', '.join(known)})")


def translate(docs: Sequence[object], history: History | None = None) -> Translation:
    """InferenceService documents → the native spec mapping; :class:`SpecError` lists every
    problem. Pure: the new :class:`History` is returned, the one given is not changed."""
    errors: list[str] = []
    past = history.services if history is not None else {}
    services: list[dict[str, object]] = []
    new_history: dict[tuple[str, str], ServiceHistory] = {}
    kube: dict[tuple[str, str], Mapping[str, object]] = {}
    seen: dict[tuple[str, str], int] = {}
    shadows: dict[tuple[str, str], tuple[str, int]] = {}
    blocks: dict[str, dict[str, str]] = {}
    for n, raw in enumerate(docs, start=1):
        configmap = _configmap(raw, n, errors)
        if configmap is not None:
            field, data = configmap
            if field:
                blocks[field] = data
            continue
        parsed = _document(raw, n, errors)
        if parsed is None:
            continue
        key = (parsed.namespace, parsed.name)
        if key in seen:
            errors.append(
                f"{KIND} {key[0]}/{key[1]}: metadata.name: duplicate {KIND} "
                f"(documents {seen[key]} and {n})"
            )
            continue
        seen[key] = n
        service, hist = _rollout(parsed, past.get(key) if history is not None else None)
        services.append(service)
        new_history[key] = hist
        kube[(parsed.namespace, parsed.revision_name(hist))] = parsed.kube
        if parsed.shadow_of is not None:
            shadows[key] = parsed.shadow_of
    # a shadow InferenceService becomes a shadow revision of the one it names (cluster.shadow)
    services, problems = attach_shadows(services, shadows)
    errors += problems
    if errors:
        raise SpecError(tuple(errors))
    return Translation(
        spec={"services": services, **blocks},
        history=History(MappingProxyType(new_history)),
        kube=MappingProxyType(kube),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Parsed:
    namespace: str
    name: str
    body: Mapping[str, object]
    """The native revision without its name."""
    canary: int | None
    tag_routing: bool
    kube: Mapping[str, object]
    digest: str
    shadow_of: tuple[str, int] | None = None
    """(the InferenceService it shadows, percent), from its shadow.zeroserve.dev/* annotations."""

    def revision_name(self, hist: ServiceHistory) -> str:
        return f"{self.name}-predictor-{hist.numbers[self.digest]:05d}"


def _digest(body: Mapping[str, object]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _rollout(doc: _Parsed, hist: ServiceHistory | None) -> tuple[dict[str, object], ServiceHistory]:
    """KServe's canary rule (its ksvc reconciler): with ``canaryTrafficPercent`` set and a
    rolled-out revision other than the latest, the latest gets the percent and the rolled-out one
    the rest, tagged ``prev``; otherwise the latest gets 100 % and becomes the rolled-out one.
    A canary on the rolled-out revision itself splits with the one rolled out before it
    (KServe's rollback: ``canaryTrafficPercent: 0`` sends everything back to it)."""
    hist = hist or ServiceHistory()
    numbers = dict(hist.numbers)
    if doc.digest not in numbers:
        numbers[doc.digest] = max(numbers.values(), default=0) + 1
    hist = replace(hist, numbers=MappingProxyType(numbers))
    latest = RolledOut(name=doc.revision_name(hist), body=doc.body)
    base = hist.rolled_out
    if base is not None and base.name == latest.name and doc.canary is not None:
        base = hist.previous if doc.canary < 100 else None
    if doc.canary is not None and base is not None and base.name != latest.name:
        first: dict[str, object] = {"revisionName": latest.name, "percent": doc.canary}
        if doc.tag_routing:
            first["tag"] = "latest"
        traffic = [first]
        revisions = [{"name": latest.name, **latest.body}]
        if doc.canary < 100:
            traffic.append({"revisionName": base.name, "percent": 100 - doc.canary, "tag": "prev"})
            revisions.append({"name": base.name, **base.body})
    else:
        only: dict[str, object] = {"revisionName": latest.name, "percent": 100}
        if doc.tag_routing:
            only["tag"] = "latest"
        traffic = [only]
        revisions = [{"name": latest.name, **latest.body}]
    # Rolled out: KServe records it once the latest revision has all the traffic.
    rolled_out = hist.rolled_out.name if hist.rolled_out is not None else None
    if traffic[0]["percent"] == 100 and rolled_out != latest.name:
        hist = replace(hist, rolled_out=latest, previous=hist.rolled_out)
    service: dict[str, object] = {
        "name": doc.name,
        "namespace": doc.namespace,
        "revisions": revisions,
        "traffic": traffic,
    }
    return service, hist


CONFIGMAPS: Final = {"config-autoscaler": "config", "config-observability": "observability"}
"""The ConfigMaps an InferenceService file may hold beside its services, and the native spec's
block each becomes (Knative's keys; ``_example``, and a ``config-observability`` key that is
not a ``tracing-*`` one, are documentation and other features: left out)."""


def _configmap(raw: object, n: int, errors: list[str]) -> tuple[str, dict[str, str]] | None:
    """A ``v1`` ConfigMap document as (the spec block, its data); ``("", {})`` when it is one
    but invalid (the errors say why); None when the document is not a ConfigMap."""
    if not isinstance(raw, Mapping) or raw.get("kind") != "ConfigMap":
        return None
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    where = f"ConfigMap {name} (document {n})"
    if raw.get("apiVersion") != "v1" or name not in CONFIGMAPS:
        errors.append(
            f"{where}: only v1 ConfigMaps {', '.join(CONFIGMAPS)} are read beside {KIND}s"
        )
        return "", {}
    data = raw.get("data") or {}
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        errors.append(f"{where}: data: must be a mapping of names to strings")
        return "", {}
    field = CONFIGMAPS[str(name)]
    kept = {
        k: v
        for k, v in data.items()
        if k != "_example" and (field != "observability" or k.startswith("tracing-"))
    }
    return field, kept


def _document(raw: object, n: int, errors: list[str]) -> _Parsed | None:
    if not isinstance(raw, Mapping):
        errors.append(f"document {n}: must be a mapping (apiVersion, kind, metadata, spec)")
        return None
    meta = raw.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name, namespace = meta.get("name"), meta.get("namespace", DEFAULT_NAMESPACE)
    shown = f"{namespace}/{name}" if isinstance(name, str) else f"(document {n})"
    doc = _Doc(f"{KIND} {shown}", errors)
    if raw.get("apiVersion") != API_VERSION or raw.get("kind") != KIND:
        doc.add(
            "apiVersion/kind",
            f"{raw.get('apiVersion')!r}/{raw.get('kind')!r}: only {API_VERSION} {KIND} "
            "documents are read",
        )
        return None
    doc.fields(raw, "", _TOP, ignored=_TOP_IGNORED)
    if not isinstance(raw.get("metadata"), Mapping):
        doc.add("metadata", "required: a mapping with name (and namespace, annotations)")
        return None
    doc.fields(meta, "metadata", _METADATA, _METADATA_LATER, _METADATA_IGNORED)
    if not isinstance(name, str) or not _DNS1123_LABEL.fullmatch(name):
        doc.value("metadata.name", name, "required: a DNS-1123 label")
    elif len(name) > _MAX_NAME:
        doc.value(
            "metadata.name",
            name,
            f"at most {_MAX_NAME} characters (the revision {name}{_REVISION_SUFFIX} is a DNS label)",
        )
    if not isinstance(namespace, str) or not _DNS1123_LABEL.fullmatch(namespace):
        doc.value("metadata.namespace", namespace, "must be a DNS-1123 label")
    annotations = _strings(meta.get("annotations"), "metadata.annotations", doc)
    mode = annotations.get(DEPLOYMENT_MODE, "Serverless")
    if mode != "Serverless":
        doc.value(
            f"metadata.annotations[{DEPLOYMENT_MODE}]",
            mode,
            "not supported: zeroserve serves the Serverless mode (scale to zero, KPA)",
        )
    _strings(meta.get("labels"), "metadata.labels", doc)
    shadow_of, problems = isvc_shadow(annotations)
    for problem in problems:
        doc.add(*problem.split(": ", 1))

    spec = raw.get("spec")
    if not isinstance(spec, Mapping):
        doc.add("spec", "required: a mapping with predictor")
        return None
    doc.fields(spec, "spec", _SPEC, _SPEC_LATER)
    predictor = spec.get("predictor")
    if not isinstance(predictor, Mapping):
        doc.add(
            "spec.predictor", "required: a mapping (sklearn, xgboost, ..., model or containers)"
        )
        return None
    body, kube, canary = _predictor(predictor, "spec.predictor", annotations, doc)
    if doc.count or not isinstance(name, str):
        return None
    return _Parsed(
        namespace=str(namespace),
        name=name,
        body=MappingProxyType(body),
        canary=canary,
        tag_routing=annotations.get(TAG_ROUTING) == "true",
        kube=MappingProxyType(kube),
        digest=_digest(body),
        shadow_of=shadow_of,
    )


def _predictor(
    raw: Mapping[Any, object], path: str, meta_annotations: Mapping[str, str], doc: _Doc
) -> tuple[dict[str, object], dict[str, object], int | None]:
    """The native revision body (no name), its Kubernetes-only container fields, the canary %."""
    doc.fields(raw, path, _PREDICTOR, _PREDICTOR_LATER)
    body: dict[str, object] = {}
    kube: dict[str, object] = {}

    # Annotations: autoscaling.knative.dev/* from the metadata and the component (which wins,
    # as KServe merges them), then the predictor's fields over them (KServe's reconciler).
    own = _strings(raw.get("annotations"), f"{path}.annotations", doc)
    annotations = {
        k: v
        for k, v in {**meta_annotations, **own}.items()
        if k.startswith((AUTOSCALING_PREFIX, BATCHING_GROUP + "/", LOGGER_GROUP + "/"))
    }
    _batcher(raw.get("batcher"), f"{path}.batcher", annotations, doc)
    _logger(raw.get("logger"), f"{path}.logger", annotations, doc)
    _strings(raw.get("labels"), f"{path}.labels", doc)
    min_replicas = _int(raw, "minReplicas", path, doc, lo=0)
    max_replicas = _int(raw, "maxReplicas", path, doc, lo=0)
    if min_replicas is not None:
        annotations[MIN_SCALE] = str(min_replicas)
    elif MIN_SCALE not in annotations and AUTOSCALING_PREFIX + "minScale" not in annotations:
        annotations[MIN_SCALE] = str(DEFAULT_MIN_REPLICAS)
    if max_replicas:  # 0: unbounded, no annotation (KServe)
        annotations[MAX_SCALE] = str(max_replicas)
        if min_replicas is not None and max_replicas < min_replicas:
            doc.value(
                f"{path}.maxReplicas", max_replicas, f"must be >= minReplicas ({min_replicas})"
            )
    target = _int(raw, "scaleTarget", path, doc, lo=1)
    if target is not None:
        annotations[TARGET] = str(target)
    metric = raw.get("scaleMetric")
    if metric is not None:
        if metric in ("concurrency", "rps"):
            annotations[METRIC] = str(metric)
        elif metric in ("cpu", "memory"):
            doc.value(
                f"{path}.scaleMetric",
                metric,
                "not supported: zeroserve's KPA scales on concurrency or rps (cpu and memory "
                "need Kubernetes' HPA)",
            )
        else:
            doc.value(f"{path}.scaleMetric", metric, "must be concurrency or rps")
    if annotations:
        body["annotations"] = annotations
    cc = _int(raw, "containerConcurrency", path, doc, lo=0)
    if cc is not None:
        body["containerConcurrency"] = cc
    timeout = _int(raw, "timeout", path, doc, lo=1)
    if timeout is not None:  # KServe sets both from `timeout`
        body["timeoutSeconds"] = timeout
        body["responseStartTimeoutSeconds"] = timeout
    canary = _int(raw, "canaryTrafficPercent", path, doc, lo=0, hi=100)

    found = [k for k in _IMPLEMENTATIONS if k in raw]
    if len(found) != 1:
        doc.add(
            path,
            f"needs exactly one of {', '.join(_IMPLEMENTATIONS)}"
            + (f" (found {', '.join(found)})" if found else ""),
        )
        return body, kube, canary
    which = found[0]
    impl = raw[which]
    ipath = f"{path}.{which}"
    if which == "containers":
        _container(impl, ipath, body, kube, doc)
        return body, kube, canary
    if not isinstance(impl, Mapping):
        doc.add(ipath, "must be a mapping (storageUri, ...)")
        return body, kube, canary
    if which == "model":
        doc.fields(impl, ipath, _MODEL, _FRAMEWORK_LATER)
        fmt = _model_format(impl, ipath, doc)
    else:
        doc.fields(impl, ipath, _FRAMEWORK, _FRAMEWORK_LATER)
        fmt = which
    uri = impl.get("storageUri")
    if not isinstance(uri, str) or not uri:
        doc.value(f"{ipath}.storageUri", uri, "required: where the model is (file://, s3://, ...)")
    protocol = impl.get("protocolVersion", "v1")
    if protocol not in _PROTOCOLS:
        doc.value(
            f"{ipath}.protocolVersion",
            protocol,
            "must be v1 or v2 (the built-in server speaks both; grpc-v2 is not supported yet)",
        )
    env = _env(impl.get("env"), f"{ipath}.env", doc)
    if env:
        body["env"] = env
    if "resources" in impl:
        kube["resources"] = _resources(impl["resources"], f"{ipath}.resources", doc)
    body["predictor"] = {"format": fmt, "storageUri": uri}
    return body, kube, canary


def _model_format(impl: Mapping[Any, object], path: str, doc: _Doc) -> str:
    fmt_raw = impl.get("modelFormat")
    fmt = ""
    if not isinstance(fmt_raw, Mapping):
        doc.add(f"{path}.modelFormat", f"required: {{name: one of {', '.join(FORMATS)}}}")
    else:
        doc.fields(fmt_raw, f"{path}.modelFormat", ("name", "version"))
        name = fmt_raw.get("name")
        if name in FORMATS:
            fmt = str(name)
        elif name in _PREDICTOR_LATER or name in ("mlflow", "tensorrt"):
            doc.value(f"{path}.modelFormat.name", name, "not supported yet")
        else:
            doc.value(f"{path}.modelFormat.name", name, f"must be one of {', '.join(FORMATS)}")
    runtime = impl.get("runtime")
    if runtime is not None:
        if runtime not in RUNTIMES:
            doc.value(
                f"{path}.runtime",
                runtime,
                f"not available (runtimes: {', '.join(RUNTIMES)}; or leave it out)",
            )
        elif fmt and fmt not in RUNTIMES[str(runtime)]:
            doc.value(f"{path}.runtime", runtime, f"does not serve the {fmt} format")
    return fmt


def _container(
    raw: object, path: str, body: dict[str, object], kube: dict[str, object], doc: _Doc
) -> None:
    if not isinstance(raw, list) or not raw:
        doc.value(path, raw, "must be a list of one container")
        return
    for i in range(1, len(raw)):
        doc.add(f"{path}[{i}]", "not supported yet (one container per predictor)")
    c = raw[0]
    cpath = f"{path}[0]"
    if not isinstance(c, Mapping):
        doc.add(cpath, "must be a mapping (image, command, args, env, ports)")
        return
    doc.fields(c, cpath, _CONTAINER, _CONTAINER_LATER)
    image = c.get("image", "")
    if not isinstance(image, str):
        doc.value(f"{cpath}.image", image, "must be a string (a container image reference)")
    elif image:
        body["image"] = image
    command = _string_list(c, "command", cpath, doc)
    args = _string_list(c, "args", cpath, doc)
    if command:
        body["command"] = command + args  # locally: one command line (listening on $PORT)
        kube["command"] = command
    elif args:
        doc.add(f"{cpath}.args", "needs command too (the local runtime runs command + args)")
    if args:
        kube["args"] = args
    if not image and not command:
        doc.add(cpath, "needs an image (Kubernetes) or a command (local runtime)")
    env = _env(c.get("env"), f"{cpath}.env", doc)
    if env:
        body["env"] = env
    user_port = 0
    ports = c.get("ports")
    if ports is not None:
        if not isinstance(ports, list) or not ports or not isinstance(ports[0], Mapping):
            doc.value(f"{cpath}.ports", ports, "must be a list of {containerPort}")
        else:
            port = ports[0].get("containerPort")
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                doc.value(f"{cpath}.ports[0].containerPort", port, "must be within [1, 65535]")
            else:
                body["port"] = user_port = port
            for j in range(1, len(ports)):
                doc.add(f"{cpath}.ports[{j}]", "not supported yet (one port: the model server's)")
    if "resources" in c:
        kube["resources"] = _resources(c["resources"], f"{cpath}.resources", doc)
    if "readinessProbe" in c:
        probe = _probe(c["readinessProbe"], f"{cpath}.readinessProbe", user_port, doc)
        if probe is not None:
            body["readinessProbe"] = probe


def _probe(raw: object, path: str, user_port: int, doc: _Doc) -> dict[str, object] | None:
    if not isinstance(raw, Mapping):
        doc.value(path, raw, "must be a mapping (httpGet or tcpSocket, periodSeconds, ...)")
        return None
    doc.fields(raw, path, _PROBE, _PROBE_LATER)
    out = {k: v for k, v in raw.items() if k in _PROBE}
    for handler in ("httpGet", "tcpSocket"):
        h = out.get(handler)
        if isinstance(h, Mapping):
            h = {k: v for k, v in h.items() if k != "scheme"}
            # The native spec's port 0 is the user port (whatever the local runtime gives it);
            # a named port or the container's own port is that port.
            port = h.get("port")
            if not isinstance(port, int) or port == (user_port or 8080):
                h["port"] = 0
            out[handler] = h
    return out


def _resources(raw: object, path: str, doc: _Doc) -> dict[str, object]:
    if not isinstance(raw, Mapping):
        doc.value(path, raw, "must be a mapping (requests, limits)")
        return {}
    doc.fields(raw, path, ("requests", "limits"), ("claims",))
    out: dict[str, object] = {}
    for key in ("requests", "limits"):
        if key in raw:
            out[key] = _strings(raw[key], f"{path}.{key}", doc)
    return out


_BATCHER = ("maxBatchSize", "maxLatency", "timeout")


def _logger(raw: object, path: str, annotations: dict[str, str], doc: _Doc) -> None:
    """KServe's ``logger`` (``url``, ``mode``: all, request or response) as the
    ``logger.zeroserve.dev/*`` annotations (cluster.payload_logging validates them; its errors
    then name the annotations, as the native spec writes them)."""
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        doc.value(path, raw, "must be a mapping (url, mode)")
        return
    doc.fields(raw, path, ("url", "mode"), ())
    if raw.get("url") is None:
        doc.add(f"{path}.url", "required: the sink's http:// URL")
    annotations.update(logger_annotations(raw))


def _batcher(raw: object, path: str, annotations: dict[str, str], doc: _Doc) -> None:
    """KServe's ``batcher`` (``maxBatchSize``, default 32; ``maxLatency`` in ms, default 5000)
    as the ``batching.zeroserve.dev/*`` annotations; a mode annotation written beside it stays
    (adaptive by default, docs/batching.md). KServe's ``timeout`` is accepted and unused: a
    request's deadline is the revision timeout."""
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        doc.value(path, raw, "must be a mapping (maxBatchSize, maxLatency)")
        return
    doc.fields(raw, path, _BATCHER, ())
    size = _int(raw, "maxBatchSize", path, doc, lo=1)
    latency = _int(raw, "maxLatency", path, doc, lo=1)
    annotations[BATCH_MAX_SIZE] = str(size if size is not None else 32)
    annotations[BATCH_MAX_LATENCY] = f"{latency if latency is not None else 5000}ms"


# -- small field helpers -----------------------------------------------------------------------


def _int(
    raw: Mapping[Any, object], name: str, path: str, doc: _Doc, *, lo: int, hi: int | None = None
) -> int | None:
    if name not in raw:
        return None
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int):
        doc.value(f"{path}.{name}", value, "must be an integer")
        return None
    if value < lo or (hi is not None and value > hi):
        rule = f"must be within [{lo}, {hi}]" if hi is not None else f"must be at least {lo}"
        doc.value(f"{path}.{name}", value, rule)
        return None
    return value


def _scalar(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _strings(raw: object, path: str, doc: _Doc) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        doc.value(path, raw, "must be a mapping of names to strings")
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        text = _scalar(v)
        if not isinstance(k, str) or text is None:
            doc.value(f"{path}[{k}]", v, "must be a string")
        else:
            out[k] = text
    return out


def _string_list(raw: Mapping[Any, object], name: str, path: str, doc: _Doc) -> list[str]:
    value = raw.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(_scalar(x) is not None for x in value):
        doc.value(f"{path}.{name}", value, "must be a list of strings")
        return []
    return [str(_scalar(x)) for x in value]


def _env(raw: object, path: str, doc: _Doc) -> dict[str, str]:
    """A container's ``env`` list (``{name, value}``) as the native mapping."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        doc.value(path, raw, "must be a list of {name, value}")
        return {}
    out: dict[str, str] = {}
    for i, item in enumerate(raw):
        ipath = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            doc.value(ipath, item, "must be a mapping {name, value}")
            continue
        doc.fields(item, ipath, ("name", "value"), ("valueFrom",))
        name = item.get("name")
        value = _scalar(item.get("value", ""))
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            doc.value(f"{ipath}.name", name, "must be an environment variable name")
        elif value is None:
            doc.value(f"{ipath}.value", item.get("value"), "must be a string")
        else:
            out[name] = value
    return out


# -- errors of the native spec, told in the InferenceService's terms -----------------------------

_NATIVE_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "annotations": "metadata.annotations (and minReplicas, maxReplicas, scaleTarget, scaleMetric)",
        "containerConcurrency": "spec.predictor.containerConcurrency",
        "timeoutSeconds": "spec.predictor.timeout",
        "responseStartTimeoutSeconds": "spec.predictor.timeout",
        "command": "spec.predictor.containers[0].command",
        "env": "spec.predictor env",
        "image": "spec.predictor.containers[0].image",
        "port": "spec.predictor.containers[0].ports[0].containerPort",
        "readinessProbe": "spec.predictor.containers[0].readinessProbe",
        "predictor": "spec.predictor",
        "name": "metadata.name",
        "namespace": "metadata.namespace",
        "traffic": "spec.predictor.canaryTrafficPercent",
    }
)
_NATIVE_PATH = re.compile(r"services\[(\d+)\](?:\.revisions\[(\d+)\])?(?:\.(\w+))?")


def _isvc_error(error: str, spec: Mapping[str, object]) -> str:
    """``services[0].revisions[0].annotations: ...`` → ``InferenceService default/iris:
    metadata.annotations (...): ...`` (the native loader's paths, in the file's own terms)."""
    m = _NATIVE_PATH.match(error)
    services = spec.get("services")
    if m is None or not isinstance(services, list) or int(m.group(1)) >= len(services):
        return error
    svc = services[int(m.group(1))]
    where = _NATIVE_FIELDS.get(m.group(3) or "", m.group(3) or "spec")
    revision = ""
    if m.group(2) is not None:
        revision = f" (revision {svc['revisions'][int(m.group(2))]['name']})"
    return f"{KIND} {svc['namespace']}/{svc['name']}{revision}: {where}{error[m.end() :]}"

"""How revisions and traffic are written as Kubernetes objects, and reading them back (validated).

A revision is a Deployment (apps/v1) named after the revision::

    metadata:
      name: iris-00001                                 # = the revision name
      labels:
        serving.knative.dev/service: iris              # required, DNS-1123 label
        serving.knative.dev/revision: iris-00001       # required, = metadata.name
      annotations:                                     # all optional
        serving.knative.dev/container-concurrency: "0"            # int >= 0, 0 = unlimited
        serving.knative.dev/timeout-seconds: "300"                # > 0
        serving.knative.dev/response-start-timeout-seconds: "0"   # >= 0, 0 = none
        serving.knative.dev/idle-timeout-seconds: "0"             # >= 0, 0 = none
        autoscaling.knative.dev/min-scale: "1"                    # any autoscaling.knative.dev/*
    spec.template.metadata.annotations:                # read too: autoscaling.knative.dev/* only
    spec.template.spec.containers: the model server (its image and first containerPort become
      Revision.image and user_port) and the ``queue-proxy`` sidecar; if the sidecar's env sets
      CONTAINER_CONCURRENCY or REVISION_TIMEOUT_SECONDS they must agree with the annotations.

Where the ``autoscaling.knative.dev/*`` annotations are read: Knative reads them from the
Revision's ``metadata.annotations`` and copies them onto the Deployment and its pod template. Here
the Deployment is the revision, so its own ``metadata.annotations`` come first: the autoscaler
reads them without touching the pods (editing a pod-template annotation restarts every pod of
the revision). The pod template's annotations are read as well, since a Knative Service carries
them at that path (``spec.template.metadata.annotations``) and a manifest converted from one keeps
them there; on a key in both places, the Deployment's value wins. :func:`misplaced_annotations`
lists the keys found only on the pod template, or there with another value, so that the caller
can warn about each.

A service's traffic split is a ConfigMap labelled with the service (its name is free; by
convention ``route-<service>``)::

    metadata: {labels: {serving.knative.dev/route: iris}}
    data:
      traffic: |                      # YAML list, the spec file's fields (Knative's names)
        - {revisionName: iris-00001, percent: 90}
        - {revisionName: iris-00002, percent: 10, tag: canary}
        - {revisionName: iris-00003, shadow: true, percent: 20}   # copies (cluster.shadow)

A service with revisions and no route ConfigMap sends 100 % to its newest revision (the
Deployment created last), as a Knative service does with ``latestRevision: true``.

Errors name the object and the field: ``Deployment default/iris-00001:
metadata.annotations[serving.knative.dev/container-concurrency] = "x": must be an integer >= 0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from cluster.annotations import GROUP as AUTOSCALING_GROUP
from cluster.annotations import AnnotationError, validate_annotations
from cluster.batching import ENV, BatchingError, batching_env, parse_batching
from cluster.kubernetes.api import Obj
from cluster.payload_logging import ENV as LOGGER_ENV
from cluster.payload_logging import LoggerError, logger_env, parse_logger
from cluster.shadow import check_shadows, is_shadow_entry, parse_shadow
from cluster.spec import Revision, ShadowTarget, TrafficTarget

SERVICE_LABEL: Final = "serving.knative.dev/service"
REVISION_LABEL: Final = "serving.knative.dev/revision"
ROUTE_LABEL: Final = "serving.knative.dev/route"
CONTAINER_CONCURRENCY: Final = "serving.knative.dev/container-concurrency"
TIMEOUT_SECONDS: Final = "serving.knative.dev/timeout-seconds"
RESPONSE_START_TIMEOUT_SECONDS: Final = "serving.knative.dev/response-start-timeout-seconds"
IDLE_TIMEOUT_SECONDS: Final = "serving.knative.dev/idle-timeout-seconds"
QUEUE_PROXY_CONTAINER: Final = "queue-proxy"
TRAFFIC_KEY: Final = "traffic"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_RULE = "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
_TRAFFIC_FIELDS = ("revisionName", "percent", "tag", "shadow")  # shadow: false


class SchemeError(ValueError):
    """An object does not follow the scheme; ``errors`` has one message per bad field, each
    starting with the object (``Deployment default/iris-00001: ...``)."""

    def __init__(self, errors: tuple[str, ...]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class _Errors:
    def __init__(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        self.prefix = f"{kind} {meta.get('namespace', '')}/{meta.get('name', '')}"
        self.items: list[str] = []

    def add(self, field: str, problem: str) -> None:
        self.items.append(f"{self.prefix}: {field}: {problem}")

    def value(self, field: str, value: object, problem: str) -> None:
        self.items.append(f"{self.prefix}: {field} = {value!r}: {problem}")

    def raise_if_any(self) -> None:
        if self.items:
            raise SchemeError(tuple(self.items))


def _string_map(raw: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def _number(
    ann: Mapping[str, str], key: str, errs: _Errors, *, default: float, positive: bool
) -> float:
    if key not in ann:
        return default
    raw = ann[key]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        errs.value(
            f"metadata.annotations[{key}]",
            raw,
            "must be a number " + ("> 0 (seconds)" if positive else ">= 0 (seconds, 0 = none)"),
        )
        return default
    return value


def _containers(obj: Obj) -> list[dict[str, Any]]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [c for c in spec.get("containers") or [] if isinstance(c, dict)]


def _autoscaling(raw: object) -> dict[str, str]:
    return {k: v for k, v in _string_map(raw).items() if k.startswith(AUTOSCALING_GROUP + "/")}


def _template_autoscaling(obj: Obj) -> dict[str, str]:
    template = (obj.get("spec") or {}).get("template") or {}
    return _autoscaling((template.get("metadata") or {}).get("annotations"))


@dataclass(frozen=True, slots=True, kw_only=True)
class MisplacedAnnotation:
    """An ``autoscaling.knative.dev/*`` annotation on the pod template that the Deployment's own
    ``metadata.annotations`` lack (``deployment_value`` None: the template's value is used) or
    set to another value (the Deployment's is used)."""

    key: str
    template_value: str
    deployment_value: str | None


def misplaced_annotations(obj: Obj) -> tuple[MisplacedAnnotation, ...]:
    """The pod template's autoscaling annotations that are not also, with the same value, in the
    Deployment's ``metadata.annotations`` (sorted by key). Knative writes both places alike."""
    own = _autoscaling((obj.get("metadata") or {}).get("annotations"))
    return tuple(
        MisplacedAnnotation(key=key, template_value=value, deployment_value=own.get(key))
        for key, value in sorted(_template_autoscaling(obj).items())
        if own.get(key) != value
    )


def revision_from_deployment(obj: Obj) -> Revision:
    """The revision a Deployment carries; :class:`SchemeError` naming each bad field."""
    errs = _Errors("Deployment", obj)
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    labels = _string_map(meta.get("labels"))
    ann = _string_map(meta.get("annotations"))

    service = labels.get(SERVICE_LABEL)
    if service is None:
        errs.add(f"metadata.labels[{SERVICE_LABEL}]", "required: the service this revision serves")
    elif not _DNS1123_LABEL.fullmatch(service):
        errs.value(f"metadata.labels[{SERVICE_LABEL}]", service, _LABEL_RULE)
    revision = labels.get(REVISION_LABEL)
    if revision != name:
        errs.value(
            f"metadata.labels[{REVISION_LABEL}]", revision, f"must equal metadata.name ({name})"
        )
    elif not _DNS1123_LABEL.fullmatch(name):
        errs.value("metadata.name", name, _LABEL_RULE)

    cc = 0
    if CONTAINER_CONCURRENCY in ann:
        raw = ann[CONTAINER_CONCURRENCY]
        if not re.fullmatch(r"[0-9]+", raw.strip()) or int(raw) > 2**31 - 1:
            errs.value(
                f"metadata.annotations[{CONTAINER_CONCURRENCY}]", raw, "must be an integer >= 0"
            )
        else:
            cc = int(raw)
    timeout = _number(ann, TIMEOUT_SECONDS, errs, default=300.0, positive=True)
    response_start = _number(ann, RESPONSE_START_TIMEOUT_SECONDS, errs, default=0.0, positive=False)
    idle = _number(ann, IDLE_TIMEOUT_SECONDS, errs, default=0.0, positive=False)

    # The pod template's autoscaling annotations fill in what the Deployment's own lack (see the
    # module docstring); each problem names the place its key was read from.
    from_template = {k: v for k, v in _template_autoscaling(obj).items() if k not in ann}
    ann = {**ann, **from_template}
    autoscaling = {k: v for k, v in ann.items() if k.startswith(AUTOSCALING_GROUP + "/")}
    try:
        # The checks that depend on config-autoscaler (max-scale-limit, allow-zero-initial-scale)
        # are the autoscaler's, which knows the config; here: syntax and ranges.
        validate_annotations(autoscaling, max_scale_limit=0, allow_zero_initial_scale=True)
    except AnnotationError as exc:
        for problem in exc.errors:
            in_template = any(problem.startswith(key) for key in from_template)
            where = "spec.template.metadata.annotations" if in_template else "metadata.annotations"
            errs.add(where, problem)

    try:
        parse_batching(ann)
    except BatchingError as exc:
        for problem in exc.errors:
            errs.add("metadata.annotations", problem)
    want_batching = batching_env(ann)
    try:
        parse_logger(ann)
    except LoggerError as exc:
        for problem in exc.errors:
            errs.add("metadata.annotations", problem)
    want_batching.update(logger_env(ann))  # (both: the env must say what the annotations say)

    image, user_port = "", 8080
    containers = _containers(obj)
    user = [c for c in containers if c.get("name") != QUEUE_PROXY_CONTAINER]
    if user:
        image = str(user[0].get("image", ""))
        ports = [p for p in user[0].get("ports") or [] if isinstance(p, dict)]
        if ports and isinstance(ports[0].get("containerPort"), int):
            user_port = ports[0]["containerPort"]
    for i, c in enumerate(containers):
        if c.get("name") != QUEUE_PROXY_CONTAINER:
            continue
        env = {
            str(e.get("name")): e.get("value") for e in c.get("env") or [] if isinstance(e, dict)
        }
        for var, want in (("CONTAINER_CONCURRENCY", cc), ("REVISION_TIMEOUT_SECONDS", timeout)):
            got = env.get(var)
            if got is None:
                continue
            try:
                same = float(str(got)) == float(want)
            except ValueError:
                same = False
            if not same:
                errs.value(
                    f"spec.template.spec.containers[{i}].env[{var}]",
                    got,
                    f"must agree with the revision's annotations ({want:g})",
                )
        for var in (*ENV.values(), *LOGGER_ENV.values()):
            got, want_value = env.get(var), want_batching.get(var)
            if got is not None and str(got) != want_value:
                errs.value(
                    f"spec.template.spec.containers[{i}].env[{var}]",
                    got,
                    f"must agree with the revision's annotations ({want_value or 'unset'})",
                )
    errs.raise_if_any()
    return Revision(
        namespace=namespace,
        service=service or "",
        name=name,
        container_concurrency=cc,
        timeout_s=timeout,
        response_start_timeout_s=response_start,
        idle_timeout_s=idle,
        annotations=ann,
        image=image,
        user_port=user_port,
    )


def traffic_from_configmap(obj: Obj) -> tuple[str, tuple[TrafficTarget, ...]]:
    """The service a route ConfigMap names and its traffic; :class:`SchemeError` if invalid."""
    service, targets, _ = route_from_configmap(obj)
    return service, targets


def route_from_configmap(
    obj: Obj,
) -> tuple[str, tuple[TrafficTarget, ...], tuple[ShadowTarget, ...]]:
    """The service a route ConfigMap names, its traffic split and its shadows (entries with
    ``shadow: true``, :mod:`cluster.shadow`); :class:`SchemeError` if invalid."""
    errs = _Errors("ConfigMap", obj)
    shadows: list[tuple[str, ShadowTarget]] = []
    meta = obj.get("metadata") or {}
    service = _string_map(meta.get("labels")).get(ROUTE_LABEL, "")
    if not _DNS1123_LABEL.fullmatch(service):
        errs.value(f"metadata.labels[{ROUTE_LABEL}]", service, _LABEL_RULE)
    data = _string_map(obj.get("data"))
    field = f"data.{TRAFFIC_KEY}"
    targets: list[TrafficTarget] = []
    try:
        raw = yaml.safe_load(data.get(TRAFFIC_KEY, ""))
    except yaml.YAMLError as exc:
        errs.add(field, f"not valid YAML: {exc}")
        raw = []
    if not isinstance(raw, list) or not raw:
        errs.add(field, "must be a non-empty YAML list of {revisionName, percent, tag}")
        raw = []
    tags: set[str] = set()
    for n, entry in enumerate(raw):
        path = f"{field}[{n}]"
        if not isinstance(entry, Mapping):
            errs.value(path, entry, "must be a mapping (revisionName, percent, tag)")
            continue
        if is_shadow_entry(entry):
            shadow, problems = parse_shadow(entry, path)
            errs.items.extend(f"{errs.prefix}: {p}" for p in problems)
            if shadow is not None:
                shadows.append((path, shadow))
            continue
        unknown = [str(k) for k in entry if k not in _TRAFFIC_FIELDS]
        if unknown:
            errs.add(
                path, f"unknown field {', '.join(unknown)} (known: {', '.join(_TRAFFIC_FIELDS)})"
            )
        revision = entry.get("revisionName")
        if not isinstance(revision, str) or not _DNS1123_LABEL.fullmatch(revision):
            errs.value(f"{path}.revisionName", revision, "required: " + _LABEL_RULE)
            revision = ""
        percent = entry.get("percent", 0)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            errs.value(f"{path}.percent", percent, "must be an integer within [0, 100]")
            percent = 0
        tag = entry.get("tag", "")
        if tag != "":
            if not isinstance(tag, str) or not _DNS1123_LABEL.fullmatch(tag):
                errs.value(f"{path}.tag", tag, _LABEL_RULE)
                tag = ""
            elif tag in tags:
                errs.value(f"{path}.tag", tag, "used twice")
            tags.add(str(tag))
        targets.append(TrafficTarget(revision=revision, percent=percent, tag=str(tag)))
    total = sum(t.percent for t in targets)
    if targets and total != 100:
        errs.add(field, f"percents sum to {total}, must be 100")
    errs.items.extend(f"{errs.prefix}: {p}" for p in check_shadows(shadows, targets))
    errs.raise_if_any()
    return service, tuple(targets), tuple(s for _, s in shadows)

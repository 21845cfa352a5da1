"""Loading a service spec file (YAML) into :class:`cluster.spec.Spec`, with errors that name the field.

The format (docs/configuration.md has the full reference)::

    domain: example.com            # optional; hosts are <service>.<namespace>.<domain>
    config:                        # optional; config-autoscaler keys, as in the ConfigMap
      stable-window: 60s
    observability:                 # optional; config-observability keys (docs/tracing.md)
      tracing-protocol: http/protobuf
      tracing-endpoint: http://127.0.0.1:4318/v1/traces
      tracing-sampling-rate: "0.1"
    services:
      - name: iris                 # DNS-1123 label
        namespace: default         # optional, default "default"
        revisions:
          - name: iris-v1
            containerConcurrency: 0          # 0 = unlimited
            timeoutSeconds: 300
            responseStartTimeoutSeconds: 0   # 0 = none
            idleTimeoutSeconds: 0            # 0 = none
            annotations: {autoscaling.knative.dev/min-scale: "1"}
            readinessProbe:
              httpGet: {path: /v2/health/ready, port: 0}   # or tcpSocket: {port: 0}; 0 = the user port
              periodSeconds: 0                             # 0 = Knative's aggressive probing
              timeoutSeconds: 1
              successThreshold: 1
              failureThreshold: 3
            command: [python, -m, examples.iris_server]    # local runtime; listens on $PORT
            env: {MODEL: iris}
            image: ghcr.io/example/iris:1                  # Kubernetes
            port: 8080                                     # the model server's port (USER_PORT)
          - name: iris-v2                  # or the built-in model server, instead of a command:
            predictor:
              format: sklearn                              # sklearn | xgboost | lightgbm | onnx | pytorch
              storageUri: s3://models/iris/model.joblib    # file://, http(s)://, s3:// or a path
              sha256: 0123...cdef                          # optional: 64 hex digits
            preload: [transformers]        # optional: modules replicas are forked with, imported
        traffic:                   # optional with one revision (it gets 100 %)
          - {revisionName: iris-v1, percent: 100, tag: v1}
          - {revisionName: iris-v2, shadow: true, percent: 20}   # copies, outside the split

Field names are Knative's (``containerConcurrency``, ``revisionName``...). Unknown fields are
errors, so a misspelt field is not silently ignored. ``config`` values and annotation values may
be written as YAML numbers or bools; they are kept as the strings Knative would see (``true``,
``70``, ``0.5``). ``config`` is checked by the ``check_config`` the caller passes (``cluster``
cannot import the autoscaler, whose :meth:`autoscaler.config.AutoscalerConfig.from_data` holds
the rules: ``zeroserve`` passes them, so ``validate``, ``up`` and a live reload all apply them);
its errors join the others as ``config.<key> = <value>: <rule>``. A ``predictor`` becomes
the revision's ``command`` (``python -m modelserver --name <service> --format <format> --model
<storageUri>``, see :func:`predictor_command`; a ``sha256`` pin as ``ZEROSERVE_MODEL_SHA256`` in
its ``env``) and, unless a ``readinessProbe`` is written, an
``httpGet`` probe of ``/v2/health/ready``; the :class:`cluster.spec.Predictor` stays on the
revision, for the runtime's prefetch and the Kubernetes init step. The loader itself validates the
``autoscaling.knative.dev/*`` annotations (:mod:`cluster.annotations`) against the
``allow-zero-initial-scale`` and ``max-scale-limit`` written in ``config``.

Every problem is collected; :class:`SpecError` lists them all, each starting with the field's
path: ``services[0].traffic: percents sum to 90, must be 100``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from cluster.annotations import (
    CLASS,
    KPA_CLASS,
    AnnotationError,
    validate_annotations,
)
from cluster.batching import BatchingError, parse_batching
from cluster.goparse import format_number, parse_bool, parse_int32
from cluster.observability import ObservabilityError, parse_tracing
from cluster.payload_logging import LoggerError, parse_logger
from cluster.shadow import check_shadows, is_shadow_entry, parse_shadow
from cluster.spec import (
    PREDICTOR_FORMATS,
    Predictor,
    ReadinessProbe,
    Revision,
    Service,
    ShadowTarget,
    Spec,
    TrafficTarget,
)

DEFAULT_DOMAIN = "example.com"
DEFAULT_NAMESPACE = "default"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_RULE = (
    "must be a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a "
    "letter or digit, at most 63 characters)"
)

_TOP_FIELDS = ("domain", "config", "observability", "services")
_SERVICE_FIELDS = ("name", "namespace", "revisions", "traffic")
_REVISION_FIELDS = (
    "name",
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
    "annotations",
    "readinessProbe",
    "command",
    "env",
    "image",
    "port",
    "predictor",
    "preload",
)
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PREDICTOR_FIELDS = ("format", "storageUri", "sha256")
_STORAGE_SCHEMES = ("file", "http", "https", "s3")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MODEL_SHA256_ENV = "ZEROSERVE_MODEL_SHA256"
"""The model server's environment variable with a predictor's ``sha256`` pin."""
PREDICTOR_PROBE = ReadinessProbe(kind="http", path="/v2/health/ready")
"""The readiness probe of a predictor revision that writes none: the model server's V2 health."""
_PROBE_FIELDS = (
    "httpGet",
    "tcpSocket",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
)
_TRAFFIC_FIELDS = (
    "revisionName",
    "percent",
    "tag",
    "shadow",
)  # shadow: false (else cluster.shadow)


class SpecError(ValueError):
    """A spec is invalid. ``errors`` has one message per problem, each starting with the field's
    path (``services[1].traffic[0].revisionName = 'v3': no such revision``); ``str()`` joins them
    with ``; ``.
    """

    def __init__(self, errors: tuple[str, ...]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


ConfigCheck = Callable[[Mapping[str, str]], Sequence[str]]
"""Checks a spec's ``config`` block: one message per problem, each starting with the key
(``stable-window = 3s: must be within [6s, 1h]``); empty when it is valid."""


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append(f"{path}: {problem}")

    def value(self, path: str, value: object, problem: str) -> None:
        self.items.append(f"{path} = {value!r}: {problem}")


def load_spec(path: str | os.PathLike[str], *, check_config: ConfigCheck | None = None) -> Spec:
    """Read and validate a spec file. Raises :class:`SpecError` (each error prefixed by the file).

    ``check_config`` validates the ``config`` block (see :func:`parse_spec`).
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError((f"{name}: not valid YAML: {exc}",)) from exc
    if not isinstance(data, Mapping):
        raise SpecError((f"{name}: the spec must be a mapping with a 'services' list",))
    try:
        return parse_spec(data, check_config=check_config)
    except SpecError as exc:
        raise SpecError(tuple(f"{name}: {e}" for e in exc.errors)) from exc


def parse_spec(data: Mapping[str, object], *, check_config: ConfigCheck | None = None) -> Spec:
    """Validate an already-parsed spec document and build the :class:`Spec`. Pure.

    ``check_config`` (the autoscaler's rules, given by the caller) checks the ``config`` block;
    its problems are reported with the others, each as ``config.<its message>``. Without it,
    ``config`` is only checked to be a mapping of strings.
    """
    errs = _Errors()
    _unknown(data, _TOP_FIELDS, "spec", errs)

    domain = DEFAULT_DOMAIN
    raw_domain = data.get("domain", DEFAULT_DOMAIN)
    if not isinstance(raw_domain, str) or not all(
        _DNS1123_LABEL.fullmatch(p) for p in raw_domain.split(".")
    ):
        errs.value("domain", raw_domain, "must be a DNS name of DNS-1123 labels (e.g. example.com)")
    else:
        domain = raw_domain

    observability = _string_map(data.get("observability"), "observability", errs)
    try:
        parse_tracing(observability)
    except ObservabilityError as exc:
        for problem in exc.errors:
            errs.add("observability", problem)

    config = _string_map(data.get("config"), "config", errs)
    if check_config is not None:
        errs.items.extend(f"config.{problem}" for problem in check_config(config))

    # The config-autoscaler values that annotation validation depends on, read leniently: if they
    # are malformed the autoscaler reports it when it parses config (with the key named).
    try:
        allow_zero = parse_bool(config.get("allow-zero-initial-scale", "false"))
    except ValueError:
        allow_zero = False
    try:
        limit = parse_int32(config.get("max-scale-limit", "0"))
    except ValueError:
        limit = 0

    services: list[Service] = []
    raw_services = data.get("services")
    if not isinstance(raw_services, list):
        errs.add("services", "required: a list of services")
        raw_services = []
    seen_services: dict[tuple[str, str], str] = {}
    seen_revisions: dict[tuple[str, str], str] = {}
    for i, raw in enumerate(raw_services):
        path = f"services[{i}]"
        svc = _service(raw, path, errs, allow_zero=allow_zero, limit=limit)
        if svc is None:
            continue
        key = (svc.namespace, svc.name)
        if key in seen_services:
            errs.value(
                f"{path}.name",
                svc.name,
                f"duplicate service {svc.namespace}/{svc.name} (also {seen_services[key]})",
            )
        else:
            seen_services[key] = path
        for j, rev in enumerate(svc.revisions):
            rkey = (rev.namespace, rev.name)
            rpath = f"{path}.revisions[{j}]"
            if rkey in seen_revisions:
                errs.value(
                    f"{rpath}.name",
                    rev.name,
                    f"duplicate revision {rev.namespace}/{rev.name} (also {seen_revisions[rkey]})",
                )
            else:
                seen_revisions[rkey] = rpath
        services.append(svc)

    if errs.items:
        raise SpecError(tuple(errs.items))
    return Spec(
        services=tuple(services),
        config=MappingProxyType(config),
        domain=domain,
        observability=MappingProxyType(observability),
    )


def _service(
    raw: object, path: str, errs: _Errors, *, allow_zero: bool, limit: int
) -> Service | None:
    if not isinstance(raw, Mapping):
        errs.add(path, "must be a mapping (name, namespace, revisions, traffic)")
        return None
    _unknown(raw, _SERVICE_FIELDS, path, errs)
    name = _label(raw.get("name"), f"{path}.name", errs, required=True)
    namespace = _label(
        raw.get("namespace", DEFAULT_NAMESPACE), f"{path}.namespace", errs, required=True
    )

    revisions: list[Revision] = []
    raw_revisions = raw.get("revisions")
    if not isinstance(raw_revisions, list) or not raw_revisions:
        errs.add(f"{path}.revisions", "required: a list of at least one revision")
        raw_revisions = []
    names: set[str] = set()
    for j, raw_rev in enumerate(raw_revisions):
        rev = _revision(
            raw_rev,
            f"{path}.revisions[{j}]",
            errs,
            namespace=namespace,
            service=name,
            allow_zero=allow_zero,
            limit=limit,
        )
        if rev is not None:
            revisions.append(rev)
        # Traffic is checked against the names written, so that a revision with another error
        # does not also make its traffic target "no such revision".
        if isinstance(raw_rev, Mapping) and isinstance(raw_rev.get("name"), str):
            names.add(raw_rev["name"])

    traffic: list[TrafficTarget] = []
    shadows: list[tuple[str, ShadowTarget]] = []
    raw_traffic = raw.get("traffic")
    if raw_traffic is None:
        if len(raw_revisions) == 1 and revisions:
            traffic.append(TrafficTarget(revision=revisions[0].name, percent=100))
        elif len(raw_revisions) > 1:
            errs.add(f"{path}.traffic", "required when a service has more than one revision")
    elif not isinstance(raw_traffic, list) or not raw_traffic:
        errs.add(f"{path}.traffic", "must be a list of at least one {revisionName, percent, tag}")
    else:
        tags: dict[str, str] = {}
        all_valid = True
        for k, raw_target in enumerate(raw_traffic):
            tpath = f"{path}.traffic[{k}]"
            if is_shadow_entry(raw_target):  # outside the split (cluster.shadow)
                assert isinstance(raw_target, Mapping)
                shadow, problems = parse_shadow(raw_target, tpath, revisions=names)
                errs.items.extend(problems)
                if shadow is not None:
                    shadows.append((tpath, shadow))
                continue
            target = _traffic(raw_target, tpath, errs, revisions=names, service=name)
            if target is None:
                all_valid = False
                continue
            if target.tag:
                if target.tag in tags:
                    errs.value(
                        f"{tpath}.tag", target.tag, f"duplicate tag (also {tags[target.tag]})"
                    )
                tags.setdefault(target.tag, tpath)
            traffic.append(target)
        total = sum(t.percent for t in traffic)
        if all_valid and total != 100:
            errs.add(f"{path}.traffic", f"percents sum to {total}, must be 100")
        errs.items.extend(check_shadows(shadows, traffic))

    if name is None or namespace is None:
        return None
    return Service(
        namespace=namespace,
        name=name,
        revisions=tuple(revisions),
        traffic=tuple(traffic),
        shadows=tuple(s for _, s in shadows),
    )


def _revision(
    raw: object,
    path: str,
    errs: _Errors,
    *,
    namespace: str | None,
    service: str | None,
    allow_zero: bool,
    limit: int,
) -> Revision | None:
    if not isinstance(raw, Mapping):
        errs.add(path, "must be a mapping (name, containerConcurrency, command, ...)")
        return None
    before = len(errs.items)
    _unknown(raw, _REVISION_FIELDS, path, errs)
    name = _label(raw.get("name"), f"{path}.name", errs, required=True)
    cc = _int(raw, "containerConcurrency", path, errs, default=0, lo=0)
    timeout = _seconds(raw, "timeoutSeconds", path, errs, default=300.0, positive=True)
    response_start = _seconds(raw, "responseStartTimeoutSeconds", path, errs, default=0.0)
    idle = _seconds(raw, "idleTimeoutSeconds", path, errs, default=0.0)
    port = _int(raw, "port", path, errs, default=8080, lo=1, hi=65535)
    image = raw.get("image", "")
    if not isinstance(image, str):
        errs.value(f"{path}.image", image, "must be a string (a container image reference)")
        image = ""

    command: tuple[str, ...] = ()
    raw_command = raw.get("command")
    if raw_command is not None:
        if not isinstance(raw_command, list) or not raw_command:
            errs.value(f"{path}.command", raw_command, "must be a non-empty list of strings")
        else:
            parts = [_scalar(x, f"{path}.command[{n}]", errs) for n, x in enumerate(raw_command)]
            command = tuple(p for p in parts if p is not None)
    predictor: Predictor | None = None
    if "predictor" in raw:
        predictor = _predictor(raw["predictor"], f"{path}.predictor", errs)
        if raw_command is not None:
            errs.add(
                path,
                "command and predictor are exclusive: a predictor runs the built-in model "
                "server (python -m modelserver), a command runs your own",
            )
        if "image" in raw:
            errs.add(
                path,
                "image and predictor are exclusive: a predictor runs the built-in model server "
                "from zeroserve's image, an image runs your own",
            )
    elif not command and not image and raw_command is None:
        errs.add(path, "needs a command (local runtime), an image (Kubernetes) or a predictor")

    env = _string_map(raw.get("env"), f"{path}.env", errs)
    for key in env:
        if not _ENV_NAME.fullmatch(key):
            errs.value(
                f"{path}.env", key, "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )

    annotations = _string_map(raw.get("annotations"), f"{path}.annotations", errs)
    try:
        validate_annotations(
            annotations, max_scale_limit=limit, allow_zero_initial_scale=allow_zero
        )
    except AnnotationError as exc:
        for problem in exc.errors:
            errs.add(f"{path}.annotations", problem)
    try:
        parse_batching(annotations)
    except BatchingError as exc:
        for problem in exc.errors:
            errs.add(f"{path}.annotations", problem)
    try:
        parse_logger(annotations)
    except LoggerError as exc:
        for problem in exc.errors:
            errs.add(f"{path}.annotations", problem)
    if (found := CLASS.get(annotations)) is not None and found[1] != KPA_CLASS:
        errs.add(
            f"{path}.annotations", f"{found[0]} = {found[1]}: zeroserve implements only {KPA_CLASS}"
        )

    probe = _probe(raw.get("readinessProbe"), f"{path}.readinessProbe", errs)
    preload = _preload(raw.get("preload"), f"{path}.preload", errs)

    if len(errs.items) > before or name is None or namespace is None or service is None:
        return None
    if predictor is not None:
        command = predictor_command(service, predictor)
        env = predictor_env(predictor, env)
        if raw.get("readinessProbe") is None:
            probe = PREDICTOR_PROBE
    return Revision(
        namespace=namespace,
        service=service,
        name=name,
        container_concurrency=cc,
        timeout_s=timeout,
        response_start_timeout_s=response_start,
        idle_timeout_s=idle,
        annotations=MappingProxyType(annotations),
        readiness_probe=probe,
        command=command,
        env=MappingProxyType(env),
        image=image,
        user_port=port,
        predictor=predictor,
        preload=preload,
    )


def _preload(raw: object, path: str, errs: _Errors) -> tuple[str, ...]:
    """``preload: [torch, transformers]``: Python module names, each once."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errs.value(path, raw, "must be a list of Python module names (torch, transformers)")
        return ()
    names: list[str] = []
    for n, item in enumerate(raw):
        if not isinstance(item, str) or not _MODULE_NAME.fullmatch(item):
            errs.value(f"{path}[{n}]", item, "must be a Python module name (torch, torch.nn)")
        elif item not in names:
            names.append(item)
    return tuple(names)


def predictor_command(service: str, predictor: Predictor) -> tuple[str, ...]:
    """The built-in model server's command for ``predictor`` (``$PORT`` is its port)::

        python -m modelserver --name iris --format sklearn --model s3://models/iris/model.joblib

    The model server fetches the URI through the node's artifact cache, which the runtime's
    prefetch (or the Kubernetes init step) has filled already. A ``sha256`` pin travels in the
    environment (:func:`predictor_env`).
    """
    return (
        *("python", "-m", "modelserver", "--name", service, "--format", predictor.format),
        *("--model", predictor.storage_uri),
    )


def predictor_env(predictor: Predictor, env: Mapping[str, str]) -> dict[str, str]:
    """The revision's ``env`` plus, for a pinned artifact, ``ZEROSERVE_MODEL_SHA256`` (the
    digest the model server's fetch checks), which the predictor's ``sha256`` sets."""
    out = dict(env)
    if predictor.sha256:
        out[MODEL_SHA256_ENV] = predictor.sha256
    return out


def _predictor(raw: object, path: str, errs: _Errors) -> Predictor | None:
    if not isinstance(raw, Mapping):
        errs.value(path, raw, "must be a mapping (format, storageUri, sha256)")
        return None
    before = len(errs.items)
    _unknown(raw, _PREDICTOR_FIELDS, path, errs)
    fmt = raw.get("format")
    if fmt is None:
        errs.add(f"{path}.format", f"required: one of {', '.join(PREDICTOR_FORMATS)}")
    elif fmt not in PREDICTOR_FORMATS:
        errs.value(f"{path}.format", fmt, f"must be one of {', '.join(PREDICTOR_FORMATS)}")
    uri = raw.get("storageUri")
    if uri is None:
        errs.add(f"{path}.storageUri", "required: where the model is (s3://, http(s)://, file://)")
    else:
        problem = storage_uri_problem(uri)
        if problem:
            errs.value(f"{path}.storageUri", uri, problem)
    sha256 = raw.get("sha256", "")
    if "sha256" in raw and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        # (a digest of decimal digits only is read by YAML as a number: quote it)
        errs.value(f"{path}.sha256", sha256, "must be 64 hexadecimal digits, quoted (the SHA-256)")
    if (
        len(errs.items) > before
        or not isinstance(fmt, str)
        or not isinstance(uri, str)
        or not isinstance(sha256, str)
    ):
        return None
    return Predictor(format=fmt, storage_uri=uri, sha256=sha256.lower())


def storage_uri_problem(uri: object) -> str:
    """Why ``uri`` is not a storageUri zeroserve can fetch ("" when it is one)."""
    if not isinstance(uri, str) or not uri.strip():
        return "must be a non-empty string: s3://, http(s)://, file:// or a plain path"
    if uri != uri.strip():
        return "must not start or end with whitespace"
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "":
        return ""  # a plain path (relative to where zeroserve runs)
    if scheme not in _STORAGE_SCHEMES:
        return (
            f"scheme '{parts.scheme}' is not supported "
            "(s3://, http://, https://, file:// or a plain path)"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            return "a file URI must be file:///absolute/path"
    elif scheme == "s3":
        if not parts.netloc or not parts.path.lstrip("/"):
            return "an s3 URI must be s3://<bucket>/<key>"
    elif not parts.hostname:
        return f"an {scheme} URI must name a host ({scheme}://host/path)"
    return ""


def _probe(raw: object, path: str, errs: _Errors) -> ReadinessProbe:
    if raw is None:
        return ReadinessProbe()
    if not isinstance(raw, Mapping):
        errs.add(path, "must be a mapping with httpGet or tcpSocket")
        return ReadinessProbe()
    _unknown(raw, _PROBE_FIELDS, path, errs)
    kind: Literal["http", "tcp"] = "tcp"
    probe_path = "/"
    port = 0
    handlers = [h for h in ("httpGet", "tcpSocket") if h in raw]
    if len(handlers) != 1:
        errs.add(path, "needs exactly one of httpGet or tcpSocket")
    elif handlers[0] == "httpGet":
        kind = "http"
        http = raw["httpGet"]
        if not isinstance(http, Mapping):
            errs.add(f"{path}.httpGet", "must be a mapping (path, port)")
        else:
            _unknown(http, ("path", "port"), f"{path}.httpGet", errs)
            probe_path_raw = http.get("path", "/")
            if not isinstance(probe_path_raw, str) or not probe_path_raw.startswith("/"):
                errs.value(
                    f"{path}.httpGet.path", probe_path_raw, "must be a path starting with '/'"
                )
            else:
                probe_path = probe_path_raw
            port = _int(http, "port", f"{path}.httpGet", errs, default=0, lo=0, hi=65535)
    else:
        tcp = raw["tcpSocket"]
        if not isinstance(tcp, Mapping):
            errs.add(f"{path}.tcpSocket", "must be a mapping (port)")
        else:
            _unknown(tcp, ("port",), f"{path}.tcpSocket", errs)
            port = _int(tcp, "port", f"{path}.tcpSocket", errs, default=0, lo=0, hi=65535)
    return ReadinessProbe(
        kind=kind,
        path=probe_path,
        port=port,
        period_s=_seconds(raw, "periodSeconds", path, errs, default=0.0),
        timeout_s=_seconds(raw, "timeoutSeconds", path, errs, default=1.0, positive=True),
        success_threshold=_int(raw, "successThreshold", path, errs, default=1, lo=1),
        failure_threshold=_int(raw, "failureThreshold", path, errs, default=3, lo=1),
    )


def _traffic(
    raw: object, path: str, errs: _Errors, *, revisions: set[str], service: str | None
) -> TrafficTarget | None:
    if not isinstance(raw, Mapping):
        errs.add(path, "must be a mapping (revisionName, percent, tag)")
        return None
    before = len(errs.items)
    _unknown(raw, _TRAFFIC_FIELDS, path, errs)
    revision = raw.get("revisionName")
    if not isinstance(revision, str) or not revision:
        errs.value(
            f"{path}.revisionName", revision, "required: the name of one of the service's revisions"
        )
    elif revision not in revisions:
        errs.value(f"{path}.revisionName", revision, "no such revision")
    percent = _int(raw, "percent", path, errs, default=0, lo=0, hi=100)
    tag = ""
    if "tag" in raw:
        tag = _label(raw["tag"], f"{path}.tag", errs, required=True) or ""
        # The tagged host is <tag>-<service>: it must still be one DNS label.
        if tag and service and len(f"{tag}-{service}") > 63:
            errs.value(
                f"{path}.tag", tag, f"'{tag}-{service}' must be at most 63 characters (a DNS label)"
            )
    if len(errs.items) > before or not isinstance(revision, str):
        return None
    return TrafficTarget(revision=revision, percent=percent, tag=tag)


# -- small field helpers -----------------------------------------------------------------------


def _unknown(raw: Mapping[Any, object], allowed: tuple[str, ...], path: str, errs: _Errors) -> None:
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        errs.add(path, f"unknown field {names} (known: {', '.join(allowed)})")


def _label(value: object, path: str, errs: _Errors, *, required: bool) -> str | None:
    if value is None and required:
        errs.add(path, "required")
        return None
    if not isinstance(value, str) or not _DNS1123_LABEL.fullmatch(value):
        errs.value(path, value, _LABEL_RULE)
        return None
    return value


def _int(
    raw: Mapping[Any, object],
    name: str,
    path: str,
    errs: _Errors,
    *,
    default: int,
    lo: int,
    hi: int | None = None,
) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        errs.value(f"{path}.{name}", value, "must be an integer")
        return default
    if value < lo or (hi is not None and value > hi):
        errs.value(
            f"{path}.{name}",
            value,
            f"must be within [{lo}, {hi}]" if hi is not None else f"must be at least {lo}",
        )
        return default
    return value


def _seconds(
    raw: Mapping[Any, object],
    name: str,
    path: str,
    errs: _Errors,
    *,
    default: float,
    positive: bool = False,
) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        errs.value(f"{path}.{name}", value, "must be a number of seconds")
        return default
    if value < 0 or (positive and value == 0):
        errs.value(
            f"{path}.{name}", value, "must be greater than 0" if positive else "must be at least 0"
        )
        return default
    return float(value)


def _scalar(value: object, path: str, errs: _Errors) -> str | None:
    """A string, or a YAML number/bool as the string Knative would see (``true``, ``70``, ``0.5``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    errs.value(path, value, "must be a string, number or bool")
    return None


def _string_map(raw: object, path: str, errs: _Errors) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errs.value(path, raw, "must be a mapping of names to strings")
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            errs.value(path, key, "keys must be strings")
            continue
        text = _scalar(value, f"{path}.{key}", errs)
        if text is not None:
            out[key] = text
    return out

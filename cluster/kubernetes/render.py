"""A spec as Kubernetes manifests (``zeroserve render``): what :mod:`cluster.kubernetes.scheme` reads.

Per revision a Deployment (labels ``serving.knative.dev/service`` and ``/revision``, the
revision's settings as ``serving.knative.dev/*`` annotations and its ``autoscaling.knative.dev/*``
annotations on ``metadata.annotations``; the pod is the model server plus the ``queue-proxy``
sidecar, as ``deploy/examples/iris/revision.yaml``) and its Service (whose EndpointSlices the
activator and the autoscaler read); per service the route ConfigMap ``route-<service>``.

A revision with a ``predictor`` runs the built-in model server from the zeroserve image
(``python -m modelserver --name --format --model <storageUri>``). Its artifact is fetched before
the model server starts by an init container running the same code the server and the local
runtime use (``python -m modelserver.storage fetch <storageUri>``) into a node-local cache (a
``hostPath`` at :data:`CACHE_DIR`, mounted at the same place in both containers, named by
``ZEROSERVE_MODEL_CACHE``): the model server then finds the artifact there, and holds it while it
runs so that the cache never evicts it. A revision with an ``image`` runs that image (with the
command and args an InferenceService's container gives, else its entrypoint); one with only a
``command`` runs it in the zeroserve image, as the example does.

``spec.replicas`` is left out: Kubernetes starts one pod (Knative's ``initial-scale`` default),
the autoscaler owns the field from then on, and applying the manifests again never resets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import yaml

from cluster.batching import batching_env
from cluster.kubernetes.api import Obj
from cluster.kubernetes.scheme import (
    CONTAINER_CONCURRENCY,
    IDLE_TIMEOUT_SECONDS,
    QUEUE_PROXY_CONTAINER,
    RESPONSE_START_TIMEOUT_SECONDS,
    REVISION_LABEL,
    ROUTE_LABEL,
    SERVICE_LABEL,
    TIMEOUT_SECONDS,
    TRAFFIC_KEY,
)
from cluster.local.supervisor import readiness_probe_json
from cluster.observability import CONFIGMAP as OBSERVABILITY
from cluster.payload_logging import logger_env
from cluster.shadow import shadow_entry
from cluster.spec import Predictor, Revision, Service, Spec

CACHE_DIR: Final = "/var/cache/zeroserve/models"
"""The node's artifact cache (a hostPath), at the same path in the init and model containers."""
CACHE_ENV: Final = "ZEROSERVE_MODEL_CACHE"
CACHE_VOLUME: Final = "model-cache"
USER_CONTAINER: Final = "user-container"
INIT_CONTAINER: Final = "storage-initializer"  # KServe's name for its fetch step
CACHE_OWNER_CONTAINER: Final = "model-cache-owner"
QUEUE_SERVING_PORT: Final = 8012
OBSERVABILITY_VOLUME: Final = "config-observability"
OBSERVABILITY_DIR: Final = "/etc/zeroserve/observability"
"""Where the queue-proxy reads config-observability, one file per key (QUEUE_OBSERVABILITY_DIR)."""
ADMIN_PORT: Final = 8022
METRICS_PORT: Final = 9090
RUN_AS: Final = 65532  # the image's user (Dockerfile: USER 65532:65532)


def _hardened() -> dict[str, object]:
    """A container's security context in the restricted Pod Security profile (a new dict each
    time: no object is shared between two places of the manifests)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def render(
    spec: Spec,
    *,
    image: str,
    kube: Mapping[tuple[str, str], Mapping[str, object]] | None = None,
) -> list[Obj]:
    """The manifests of every service of ``spec``: per revision its Deployment and Service, then
    the service's route ConfigMap. ``image`` is the zeroserve image (the queue-proxy, the built-in
    model server, the fetch step); ``kube`` adds Kubernetes-only container fields per revision
    (namespace, name): ``resources``, and a custom container's ``command``/``args``."""
    extra = kube or {}
    out: list[Obj] = []
    if spec.observability:  # the queue-proxies' tracing, in each namespace with a revision
        for namespace in sorted({svc.namespace for svc in spec.services}):
            out.append(observability_configmap(namespace, spec.observability))
    for svc in spec.services:
        for rev in svc.revisions:
            out.append(deployment(rev, image=image, extra=extra.get((rev.namespace, rev.name), {})))
            out.append(revision_service(rev))
        out.append(route(svc))
    return out


def observability_configmap(namespace: str, data: Mapping[str, str]) -> Obj:
    """``config-observability`` of a namespace: what its revisions' queue-proxies read (the
    activator reads the one in its own namespace, deploy/config-observability.yaml)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": OBSERVABILITY, "namespace": namespace},
        "data": dict(data),
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: every value written out where it is used


def _string(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # A multi-line value (the route's traffic list) as a block literal, as one writes it by hand.
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    )


_Dumper.add_representer(str, _string)


def to_yaml(objects: list[Obj]) -> str:
    """``---``-separated YAML, ready for ``kubectl apply -f -``."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _labels(rev: Revision) -> dict[str, str]:
    return {SERVICE_LABEL: rev.service, REVISION_LABEL: rev.name}


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def deployment(rev: Revision, *, image: str, extra: Mapping[str, object]) -> Obj:
    """The revision's Deployment (the scheme of :func:`cluster.kubernetes.scheme.revision_from_deployment`)."""
    annotations = {
        CONTAINER_CONCURRENCY: str(rev.container_concurrency),
        TIMEOUT_SECONDS: _seconds(rev.timeout_s),
    }
    if rev.response_start_timeout_s:
        annotations[RESPONSE_START_TIMEOUT_SECONDS] = _seconds(rev.response_start_timeout_s)
    if rev.idle_timeout_s:
        annotations[IDLE_TIMEOUT_SECONDS] = _seconds(rev.idle_timeout_s)
    annotations.update(rev.annotations)
    own_image = bool(rev.image) and rev.predictor is None
    pod: dict[str, Any] = {
        # = the revision's timeout (Knative): a request in flight may finish
        "terminationGracePeriodSeconds": math.ceil(rev.timeout_s),
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_user_container(rev, image=image, extra=extra), _queue_proxy(rev, image)],
    }
    if not own_image:  # every container is the zeroserve image, which runs as its own user
        pod["securityContext"].update(runAsNonRoot=True, runAsUser=RUN_AS, runAsGroup=RUN_AS)
    # config-observability of the revision's namespace, for the queue-proxy (optional: without
    # it, no tracing); the kubelet refreshes the files when the ConfigMap changes
    volumes: list[dict[str, Any]] = [
        {"name": OBSERVABILITY_VOLUME, "configMap": {"name": OBSERVABILITY, "optional": True}}
    ]
    if rev.predictor is not None:
        pod["initContainers"] = _fetch_steps(rev, rev.predictor, image)
        volumes += [
            {
                "name": CACHE_VOLUME,
                "hostPath": {"path": CACHE_DIR, "type": "DirectoryOrCreate"},
            },
            {"name": "tmp", "emptyDir": {}},
        ]
    pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": rev.name,
            "namespace": rev.namespace,
            "labels": _labels(rev),
            "annotations": annotations,
        },
        "spec": {
            "selector": {"matchLabels": {REVISION_LABEL: rev.name}},
            "template": {"metadata": {"labels": _labels(rev)}, "spec": pod},
        },
    }


def _env(values: Mapping[str, str]) -> list[dict[str, object]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _user_container(rev: Revision, *, image: str, extra: Mapping[str, object]) -> dict[str, Any]:
    env = {"PORT": str(rev.user_port), **rev.env}
    c: dict[str, Any] = {"name": USER_CONTAINER}
    if rev.predictor is not None:
        env[CACHE_ENV] = CACHE_DIR
        c.update(image=image, command=list(rev.command))
        c["volumeMounts"] = [
            {"name": CACHE_VOLUME, "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        c["securityContext"] = _hardened()
    elif rev.image:
        c["image"] = rev.image
        for key in ("command", "args"):
            if isinstance(value := extra.get(key), list):
                c[key] = list(value)
        c["securityContext"] = {"allowPrivilegeEscalation": False}
    else:  # a command: the example model servers are in the zeroserve image
        c.update(image=image, command=list(rev.command), securityContext=_hardened())
    c["env"] = _env(env)
    c["ports"] = [{"name": "user-port", "containerPort": rev.user_port}]
    # the queue-proxy drains first; the model server stops only after it
    c["lifecycle"] = {"preStop": {"httpGet": {"path": "/wait-for-drain", "port": ADMIN_PORT}}}
    if "resources" in extra:
        c["resources"] = extra["resources"]
    return c


def _fetch_steps(rev: Revision, predictor: Predictor, image: str) -> list[dict[str, Any]]:
    """Before the model server: the cache directory made the image user's (a hostPath made by
    the kubelet is root's), then the artifact fetched into it by the same code the server uses."""
    mount = [{"name": CACHE_VOLUME, "mountPath": CACHE_DIR}]
    fetch = ["python", "-m", "modelserver.storage", "fetch", predictor.storage_uri]
    if predictor.sha256:
        fetch += ["--sha256", predictor.sha256]
    chown = f"import os; os.chown({CACHE_DIR!r}, {RUN_AS}, {RUN_AS})"
    return [
        {
            "name": CACHE_OWNER_CONTAINER,
            "image": image,
            "command": ["python", "-c", chown],
            "volumeMounts": mount,
            "securityContext": {
                "runAsUser": 0,
                "runAsNonRoot": False,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
            },
        },
        {
            "name": INIT_CONTAINER,
            "image": image,
            "command": fetch,
            # the revision's env too: credentials (AWS_*) and endpoints the fetch needs
            "env": _env({**rev.env, CACHE_ENV: CACHE_DIR}),
            "volumeMounts": [*mount, {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": _hardened(),
        },
    ]


def _queue_proxy(rev: Revision, image: str) -> dict[str, Any]:
    env: list[dict[str, object]] = [
        {
            "name": "SERVING_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "SERVING_SERVICE", "value": rev.service},
        {"name": "SERVING_REVISION", "value": rev.name},
        {"name": "SERVING_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SERVING_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # = the annotations (the scheme checks that they agree)
        {"name": "CONTAINER_CONCURRENCY", "value": str(rev.container_concurrency)},
        {"name": "REVISION_TIMEOUT_SECONDS", "value": _seconds(rev.timeout_s)},
        {
            "name": "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            "value": _seconds(rev.response_start_timeout_s),
        },
        {"name": "REVISION_IDLE_TIMEOUT_SECONDS", "value": _seconds(rev.idle_timeout_s)},
        {"name": "QUEUE_SERVING_PORT", "value": str(QUEUE_SERVING_PORT)},
        {"name": "USER_PORT", "value": str(rev.user_port)},
        {"name": "SERVING_READINESS_PROBE", "value": readiness_probe_json(rev)},
    ]
    env.append({"name": "QUEUE_OBSERVABILITY_DIR", "value": OBSERVABILITY_DIR})
    # = the batching annotations (the scheme checks that they agree)
    env += [{"name": k, "value": v} for k, v in batching_env(rev.annotations).items()]
    # = the logger annotations (the scheme checks that they agree)
    env += [{"name": k, "value": v} for k, v in logger_env(rev.annotations).items()]
    return {
        "name": QUEUE_PROXY_CONTAINER,
        "image": image,
        "command": ["python", "-m", "queue_proxy"],
        "env": env,
        "volumeMounts": [
            {"name": OBSERVABILITY_VOLUME, "mountPath": OBSERVABILITY_DIR, "readOnly": True}
        ],
        "ports": [
            {"name": "http", "containerPort": QUEUE_SERVING_PORT},
            {"name": "admin", "containerPort": ADMIN_PORT},
            {"name": "http-stats", "containerPort": METRICS_PORT},
        ],
        # readiness through the queue-proxy, which probes the model server (Knative)
        "readinessProbe": {
            "httpGet": {
                "path": "/",
                "port": QUEUE_SERVING_PORT,
                "httpHeaders": [{"name": "K-Kubelet-Probe", "value": "queue"}],
            },
            "periodSeconds": 1,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "25m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": _hardened(),
    }


def revision_service(rev: Revision) -> Obj:
    """The revision's Service: its EndpointSlices carry the revision label (ports http, http-stats)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": rev.name, "namespace": rev.namespace, "labels": _labels(rev)},
        "spec": {
            "selector": {REVISION_LABEL: rev.name},
            "ports": [
                {"name": "http", "port": 80, "targetPort": QUEUE_SERVING_PORT},
                {"name": "http-stats", "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    }


def route(svc: Service) -> Obj:
    """The service's traffic split: ConfigMap ``route-<service>``, ``data.traffic`` a YAML list."""
    traffic = []
    for t in svc.traffic:
        entry: dict[str, object] = {"revisionName": t.revision, "percent": t.percent}
        if t.tag:
            entry["tag"] = t.tag
        traffic.append(entry)
    traffic += [shadow_entry(s) for s in svc.shadows]  # outside the split (cluster.shadow)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"route-{svc.name}",
            "namespace": svc.namespace,
            "labels": {ROUTE_LABEL: svc.name},
        },
        "data": {TRAFFIC_KEY: yaml.safe_dump(traffic, sort_keys=False, default_flow_style=None)},
    }

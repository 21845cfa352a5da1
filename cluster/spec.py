"""The service spec: services, their revisions and traffic, as the local runtime and Kubernetes see them.

This module holds the data model. Loading it from YAML and validating it (errors that name the
field) lives in :mod:`cluster.spec_loader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, order=True)
class RevisionKey:
    """A revision's identity: namespace and revision name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadinessProbe:
    """How the queue-proxy decides that the model server is ready (a K8s probe's fields).

    ``kind`` is ``"http"`` (GET ``path``, 200-399 is ready) or ``"tcp"`` (connect). ``port`` of
    0 means the user port. ``period_s`` of 0 means Knative's aggressive probing (every 50 ms).
    """

    kind: Literal["http", "tcp"] = "tcp"
    path: str = "/"
    port: int = 0
    period_s: float = 0.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


PREDICTOR_FORMATS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch")
"""The model formats of the built-in model server (``python -m modelserver --format``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Predictor:
    """A revision served by the built-in model server: the model's format and where it lives.

    ``storage_uri`` is ``file://``, ``http(s)://``, ``s3://`` or a plain path; ``sha256`` (64
    lowercase hex digits, or "" for none) pins the artifact's content. The local runtime fetches
    the artifact in the background when the revision is created; on Kubernetes an init step does.
    """

    format: str
    storage_uri: str
    sha256: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Revision:
    """One immutable version of a service's model server.

    ``command``/``env`` say how the local runtime starts a replica (``$PORT`` is the user port);
    ``image`` is the container for Kubernetes. Timeouts are seconds; 0 disables the
    response-start and idle timeouts. A revision with a ``predictor`` runs the built-in model
    server: its ``command`` is derived from the predictor by the spec loader. ``preload`` names
    modules the local runtime imports once in a parked process that replicas are forked from
    (``python -m MODULE`` commands; :mod:`cluster.local.model_zygote`).
    """

    namespace: str
    service: str
    name: str
    container_concurrency: int = 0
    timeout_s: float = 300.0
    response_start_timeout_s: float = 0.0
    idle_timeout_s: float = 0.0
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    readiness_probe: ReadinessProbe = field(default_factory=ReadinessProbe)
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    image: str = ""
    user_port: int = 8080
    predictor: Predictor | None = None
    preload: tuple[str, ...] = ()

    @property
    def key(self) -> RevisionKey:
        return RevisionKey(self.namespace, self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficTarget:
    """A share of a service's traffic: ``percent`` of it to ``revision``, and an optional tag."""

    revision: str
    percent: int = 0
    tag: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowTarget:
    """A copy of ``percent`` of a service's requests sent to ``revision`` as well, outside the
    100 % split: its responses are compared with the primary's and discarded
    (:mod:`cluster.shadow`, docs/shadow.md)."""

    revision: str
    percent: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A named model endpoint whose traffic is split over revisions by percent (and copied to
    its shadow revisions, if any)."""

    namespace: str
    name: str
    revisions: tuple[Revision, ...]
    traffic: tuple[TrafficTarget, ...]
    shadows: tuple[ShadowTarget, ...] = ()

    def revision(self, name: str) -> Revision | None:
        for rev in self.revisions:
            if rev.name == name:
                return rev
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """A whole spec file: services plus ``config-autoscaler`` keys (the ConfigMap's data) and
    ``config-observability`` keys."""

    services: tuple[Service, ...]
    config: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    domain: str = "example.com"
    observability: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """``config-observability`` keys: tracing (:mod:`cluster.observability`)."""

    def revisions(self) -> dict[RevisionKey, Revision]:
        return {rev.key: rev for svc in self.services for rev in svc.revisions}

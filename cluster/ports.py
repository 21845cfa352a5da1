"""The ports through which the components see where revisions run.

Each port has an in-memory implementation (:mod:`cluster.memory`) for component tests, the local
supervisor (:mod:`cluster.local`) and Kubernetes (:mod:`cluster.kubernetes`). Sources are
observable: ``current()`` gives a snapshot, ``subscribe(listener)`` calls the listener with each
new snapshot (on the event loop) and returns a function that unsubscribes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cluster.spec import Revision, RevisionKey, Service

Unsubscribe = Callable[[], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class PodEndpoint:
    """One replica as the activator and the scraper see it.

    ``address`` is ``host:port`` of its queue-proxy serving port (8012 in K8s); ``stats_address``
    is ``host:port`` of its stats/metrics port (9090 in K8s). ``started_at`` is unix seconds.
    """

    name: str
    address: str
    stats_address: str
    started_at: float = 0.0


class ScaleTarget(Protocol):
    """What the autoscaler scales: a revision's replica count."""

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        """Ask for ``replicas`` replicas of the revision (the K8s scale subresource)."""
        ...

    async def ready_pods(self, key: RevisionKey) -> int | None:
        """Ready replicas now; 0 if the revision is unknown, ``None`` if they cannot be counted."""
        ...

    async def initialized(self, key: RevisionKey) -> bool:
        """The revision has reached its initial scale before, as the target remembers it.

        Knative keeps this in the PodAutoscaler's status: an autoscaler that restarts must not
        give a revision it had scaled to zero its initial scale again.
        """
        ...

    async def mark_initialized(self, key: RevisionKey) -> None:
        """Remember that the revision has reached its initial scale (idempotent)."""
        ...


class InitializedInMemory:
    """:meth:`ScaleTarget.initialized` for a target whose replicas end with the process that
    runs the autoscaler (the local runtime, tests): a set is memory enough."""

    def __init__(self) -> None:
        self._initialized: set[RevisionKey] = set()

    async def initialized(self, key: RevisionKey) -> bool:
        return key in self._initialized

    async def mark_initialized(self, key: RevisionKey) -> None:
        self._initialized.add(key)


class RevisionSource(Protocol):
    """Revisions appear, change and disappear (with their annotations)."""

    def current(self) -> Mapping[RevisionKey, Revision]: ...

    def subscribe(
        self, listener: Callable[[Mapping[RevisionKey, Revision]], None]
    ) -> Unsubscribe: ...


class RouteSource(Protocol):
    """Services and their traffic split, keyed by (namespace, service name)."""

    def current(self) -> Mapping[tuple[str, str], Service]: ...

    def subscribe(
        self, listener: Callable[[Mapping[tuple[str, str], Service]], None]
    ) -> Unsubscribe: ...


class EndpointSource(Protocol):
    """Ready replicas of each revision (the K8s EndpointSlices)."""

    def current(self) -> Mapping[RevisionKey, Sequence[PodEndpoint]]: ...

    def subscribe(
        self, listener: Callable[[Mapping[RevisionKey, Sequence[PodEndpoint]]], None]
    ) -> Unsubscribe: ...


class ConfigSource(Protocol):
    """A ConfigMap's data (``config-autoscaler``), which may change at run time."""

    def current(self) -> Mapping[str, str]: ...

    def subscribe(self, listener: Callable[[Mapping[str, str]], None]) -> Unsubscribe: ...

"""In-memory implementations of the cluster ports, for component tests and embedding."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Generic, TypeVar

from cluster.ports import InitializedInMemory, PodEndpoint, Unsubscribe
from cluster.spec import Revision, RevisionKey, Service

T = TypeVar("T")


class Observable(Generic[T]):
    """A value with listeners: ``set`` replaces it and tells every listener, in order."""

    def __init__(self, value: T) -> None:
        self._value = value
        self._listeners: list[Callable[[T], None]] = []

    def current(self) -> T:
        return self._value

    def set(self, value: T) -> None:
        self._value = value
        for listener in list(self._listeners):
            listener(value)

    def subscribe(self, listener: Callable[[T], None]) -> Unsubscribe:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe


class MemoryRevisions(Observable[Mapping[RevisionKey, Revision]]):
    def __init__(self, revisions: Mapping[RevisionKey, Revision] | None = None) -> None:
        super().__init__(MappingProxyType(dict(revisions or {})))


class MemoryRoutes(Observable[Mapping[tuple[str, str], Service]]):
    def __init__(self, services: Sequence[Service] = ()) -> None:
        super().__init__(MappingProxyType({(s.namespace, s.name): s for s in services}))

    def set_services(self, services: Sequence[Service]) -> None:
        self.set(MappingProxyType({(s.namespace, s.name): s for s in services}))


class MemoryEndpoints(Observable[Mapping[RevisionKey, Sequence[PodEndpoint]]]):
    def __init__(self) -> None:
        super().__init__(MappingProxyType({}))

    def set_endpoints(self, key: RevisionKey, pods: Sequence[PodEndpoint]) -> None:
        data = dict(self.current())
        if pods:
            data[key] = tuple(pods)
        else:
            data.pop(key, None)
        self.set(MappingProxyType(data))


class MemoryConfig(Observable[Mapping[str, str]]):
    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        super().__init__(MappingProxyType(dict(data or {})))


class MemoryScaleTarget(InitializedInMemory):
    """Records what was asked; ready pods are whatever the test says (``ready``)."""

    def __init__(self) -> None:
        super().__init__()
        self.desired: dict[RevisionKey, int] = {}
        self.ready: dict[RevisionKey, int | None] = {}
        self.calls: list[tuple[RevisionKey, int]] = []

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        self.desired[key] = replicas
        self.calls.append((key, replicas))

    async def ready_pods(self, key: RevisionKey) -> int | None:
        return self.ready.get(key, 0)

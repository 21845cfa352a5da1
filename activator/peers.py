"""How many activators share the revisions and which one this is (reference §4.3).

In the local runtime there is one activator with index -1 ("use every pod"); the Kubernetes
adapter will fill it from the activator Endpoints with :func:`activator.capacity.infer_index`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from activator.throttler import PeerInfo
from cluster.memory import Observable
from cluster.ports import Unsubscribe

__all__ = ["ActivatorPeers", "PeerInfo", "StaticPeers"]


class ActivatorPeers(Protocol):
    """The activator count and own index, observable as the other ports are."""

    def current(self) -> PeerInfo: ...

    def subscribe(self, listener: Callable[[PeerInfo], None]) -> Unsubscribe: ...


class StaticPeers(Observable[PeerInfo]):
    """In-memory peers: one activator, index -1, unless told otherwise (``set``)."""

    def __init__(self, info: PeerInfo | None = None) -> None:
        super().__init__(info or PeerInfo())

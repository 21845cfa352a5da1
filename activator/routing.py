"""Routing: from a request's Host or model-protocol path to a service, then to one revision.

Host forms: ``<service>.<namespace>[.<domain>|.svc...]`` and ``<tag>-<service>.<namespace>...``
(a port is ignored). Path forms (KServe's convention, model name = service name):
``/v1/models/<service>[:predict|:explain]`` and ``/v2/models/<service>[/...]``, in the namespace
the Host names if it names a known one, else ``default``. The Host wins when it names a known
service or tag. The revision comes from the service's traffic percents, or from the tag.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cluster.ports import RouteSource
from cluster.spec import Revision, Service

_V1 = re.compile(r"^/v1/models/([^/:?]+)(?::(?:predict|explain))?/?$")
_V2 = re.compile(r"^/v2/models/([^/?]+)(?:/.*)?$")
DEFAULT_NAMESPACE = "default"


class RouteNotFoundError(Exception):
    """No service or revision for the request (404); the message names what was not found."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes."""

    service: Service
    revision: Revision
    tag: str = ""


def parse_host(host: str | None) -> tuple[str, str] | None:
    """``(first label, namespace)`` of a Host, or None for IPs and single-label hosts."""
    if not host:
        return None
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal
        return None
    h = h.split(":", 1)[0].rstrip(".")
    parts = h.split(".")
    if len(parts) < 2 or all(p.isdigit() for p in parts):
        return None
    return parts[0], parts[1]


def model_name(target: str) -> str | None:
    """The model (= service) named by a KServe v1/v2 path, if any."""
    path = target.split("?", 1)[0]
    m = _V1.match(path) or _V2.match(path)
    return m.group(1).lower() if m else None


class _Split:
    """A service's revisions with their cumulative percents (0 % targets left out)."""

    __slots__ = ("bounds", "names", "total")

    def __init__(self, service: Service) -> None:
        self.names: list[str] = []
        self.bounds: list[int] = []
        total = 0
        for target in service.traffic:
            if target.percent > 0:
                total += target.percent
                self.names.append(target.revision)
                self.bounds.append(total)
        self.total = total

    def pick(self, rng: random.Random) -> str | None:
        if self.total <= 0:
            return None
        # 90/10: bounds [90, 100]; a draw in [0, 90) → first, [90, 100) → second.
        return self.names[bisect.bisect_right(self.bounds, rng.randrange(self.total))]


class RouteTable:
    """An immutable snapshot of the routes, indexed for lookups by host and path."""

    def __init__(self, services: Mapping[tuple[str, str], Service], rng: random.Random) -> None:
        self._rng = rng
        self._services = dict(services)
        self._namespaces = {ns for ns, _ in services}
        self._splits = {key: _Split(svc) for key, svc in services.items()}
        self._tags: dict[tuple[str, str], tuple[Service, str, str]] = {}
        for (ns, name), svc in services.items():
            for target in svc.traffic:
                if target.tag:
                    self._tags[(ns, f"{target.tag}-{name}")] = (svc, target.revision, target.tag)

    def __len__(self) -> int:
        return len(self._services)

    def revisions(self) -> list[Revision]:
        return [rev for svc in self._services.values() for rev in svc.revisions]

    def resolve(self, host: str | None, target: str) -> Route:
        """The route of a request; raises :class:`RouteNotFoundError` naming what is missing."""
        named = parse_host(host)
        if named is not None:
            label, ns = named
            svc = self._services.get((ns, label))
            if svc is not None:
                return self._split_route(svc)
            tagged = self._tags.get((ns, label))
            if tagged is not None:
                svc, revision, tag = tagged
                return Route(svc, self._revision(svc, revision), tag)
        model = model_name(target)
        if model is not None:
            in_host = named is not None and named[1] in self._namespaces
            ns = named[1] if named is not None and in_host else DEFAULT_NAMESPACE
            svc = self._services.get((ns, model))
            if svc is None:
                raise RouteNotFoundError(f"service {ns}/{model} not found")
            return self._split_route(svc)
        if named is not None:
            raise RouteNotFoundError(f"service {named[1]}/{named[0]} not found")
        raise RouteNotFoundError(f"no service named by host {host or ''!r} or path {target!r}")

    def _split_route(self, svc: Service) -> Route:
        name = self._splits[(svc.namespace, svc.name)].pick(self._rng)
        if name is None:
            raise RouteNotFoundError(
                f"service {svc.namespace}/{svc.name} has no revision with a traffic percent"
            )
        return Route(svc, self._revision(svc, name))

    @staticmethod
    def _revision(svc: Service, name: str) -> Revision:
        rev = svc.revision(name)
        if rev is None:
            raise RouteNotFoundError(
                f"revision {svc.namespace}/{name} of service {svc.namespace}/{svc.name} not found"
            )
        return rev


class Router:
    """Follows a :class:`RouteSource`; each request resolves against one snapshot, so a route
    change never disturbs requests already routed."""

    def __init__(
        self,
        routes: RouteSource,
        *,
        rng: random.Random | None = None,
        on_change: Callable[[RouteTable], None] | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self._on_change = on_change
        self.table = RouteTable(routes.current(), self._rng)
        self._unsubscribe = routes.subscribe(self._update)

    def _update(self, services: Mapping[tuple[str, str], Service]) -> None:
        self.table = RouteTable(services, self._rng)
        if self._on_change is not None:
            self._on_change(self.table)

    def resolve(self, host: str | None, target: str) -> Route:
        return self.table.resolve(host, target)

    def close(self) -> None:
        self._unsubscribe()

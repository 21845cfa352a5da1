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
    """Where one name sends requests: a service's revisions with their cumulative percents
    (0 % targets left out), or a tag's one revision. Revisions are looked up once, here; a
    missing one is an error only when a request picks it."""

    __slots__ = ("bounds", "names", "only", "revisions", "service", "tag", "total")

    def __init__(self, service: Service, targets: list[tuple[str, int]], tag: str = "") -> None:
        self.service = service
        self.tag = tag
        self.names: list[str] = []
        self.bounds: list[int] = []
        total = 0
        for revision, percent in targets:
            if percent > 0:
                total += percent
                self.names.append(revision)
                self.bounds.append(total)
        self.total = total
        self.revisions = [service.revision(n) for n in self.names]
        # one revision takes all the traffic (the usual case): no draw
        self.only = self.revisions[0] if len(self.revisions) == 1 else None

    @classmethod
    def of(cls, service: Service) -> _Split:
        return cls(service, [(t.revision, t.percent) for t in service.traffic])

    def pick(self, rng: random.Random) -> Revision:
        """The revision for one request; raises :class:`RouteNotFoundError` naming what lacks."""
        only = self.only
        if only is not None:
            return only
        svc = self.service
        if self.total <= 0:
            raise RouteNotFoundError(
                f"service {svc.namespace}/{svc.name} has no revision with a traffic percent"
            )
        # 90/10: bounds [90, 100]; a draw in [0, 90) → first, [90, 100) → second.
        i = bisect.bisect_right(self.bounds, rng.randrange(self.total))
        rev = self.revisions[i]
        if rev is None:
            raise RouteNotFoundError(
                f"revision {svc.namespace}/{self.names[i]} of service "
                f"{svc.namespace}/{svc.name} not found"
            )
        return rev


_HOST_CACHE_MAX = 10_000  # distinct Host values remembered per table (cleared when full)


class RouteTable:
    """An immutable snapshot of the routes, indexed for lookups by host and path."""

    def __init__(self, services: Mapping[tuple[str, str], Service], rng: random.Random) -> None:
        self._rng = rng
        self._services = dict(services)
        self._namespaces = {ns for ns, _ in services}
        self._splits = {key: _Split.of(svc) for key, svc in services.items()}
        self._tags: dict[tuple[str, str], _Split] = {}
        for (ns, name), svc in services.items():
            for target in svc.traffic:
                if target.tag:
                    self._tags[(ns, f"{target.tag}-{name}")] = _Split(
                        svc, [(target.revision, 1)], target.tag
                    )
        # Host header as sent → the split it names (only hosts that name a service or tag)
        self._by_host: dict[str, _Split] = {}

    def __len__(self) -> int:
        return len(self._services)

    def revisions(self) -> list[Revision]:
        return [rev for svc in self._services.values() for rev in svc.revisions]

    def services(self) -> Mapping[tuple[str, str], Service]:
        """The services of this snapshot, by (namespace, name)."""
        return self._services

    def revision_for(self, host: str | None, target: str) -> Revision:
        """``resolve(host, target).revision``, faster: a Host seen before is one dict lookup."""
        if host is not None:
            split = self._by_host.get(host)
            if split is not None:
                return split.pick(self._rng)
        return self._find(host, target).pick(self._rng)

    def fixed_revision(self, host: str) -> Revision | None:
        """The one revision every request with this Host goes to, whatever its path, if the
        Host names a service (or tag) whose traffic goes to one revision and was seen before."""
        split = self._by_host.get(host)
        return split.only if split is not None else None

    def resolve(self, host: str | None, target: str) -> Route:
        """The route of a request; raises :class:`RouteNotFoundError` naming what is missing."""
        split = self._find(host, target)
        return Route(split.service, split.pick(self._rng), split.tag)

    def _find(self, host: str | None, target: str) -> _Split:
        named = parse_host(host)
        if named is not None:
            label, ns = named
            split = self._splits.get((ns, label)) or self._tags.get((ns, label))
            if split is not None:
                assert host is not None
                if len(self._by_host) >= _HOST_CACHE_MAX:
                    self._by_host.clear()
                self._by_host[host] = split
                return split
        model = model_name(target)
        if model is not None:
            in_host = named is not None and named[1] in self._namespaces
            ns = named[1] if named is not None and in_host else DEFAULT_NAMESPACE
            split = self._splits.get((ns, model))
            if split is None:
                raise RouteNotFoundError(f"service {ns}/{model} not found")
            return split
        if named is not None:
            raise RouteNotFoundError(f"service {named[1]}/{named[0]} not found")
        raise RouteNotFoundError(f"no service named by host {host or ''!r} or path {target!r}")


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

    def revision_for(self, host: str | None, target: str) -> Revision:
        return self.table.revision_for(host, target)

    def close(self) -> None:
        self._unsubscribe()

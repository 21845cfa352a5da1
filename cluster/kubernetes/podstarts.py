"""A pod's start, step by step, from what Kubernetes records on it: for the activator's
``cold_start`` span on Kubernetes (docs/tracing.md), where the local runtime's phases are not
known.

:func:`pod_start_events` reads one Pod: when it was made (``pod_created``: the ReplicaSet's
answer to the autoscaler's scale), ``scheduled``, ``sandbox_ready`` (its network is up),
each init container's ``init_container_started`` (the storage-initializer's fetch begins),
``initialized`` (init containers done), each container's ``container_started`` (its
``startedAt``, with the container's name), ``containers_ready`` and ``ready``: the conditions'
``lastTransitionTime``. Kubernetes writes these to the second, so
each event is too (the span's last event, ``endpoint_ready``, is the activator's own clock).

:class:`PodStarts` watches an :class:`cluster.ports.EndpointSource`: when a pod of a revision
becomes ready while someone wants that revision's start (``wanted``: a request waited for it),
it reads the pod (one ``GET``; the activator's role may ``get`` pods) and hands its events on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiohttp

from cluster.kubernetes.api import PODS, ApiError, KubeApi, Obj
from cluster.ports import EndpointSource, PodEndpoint
from cluster.spec import RevisionKey

log = logging.getLogger("zeroserve.cluster.kubernetes.podstarts")

Event = tuple[str, float, dict[str, Any]]
"""A step of a start: its name, when (unix seconds), its attributes."""

# Pod conditions in the order a start goes through them, and each one's event.
_CONDITIONS = (
    ("PodScheduled", "scheduled"),
    ("PodReadyToStartContainers", "sandbox_ready"),
    ("Initialized", "initialized"),
    ("ContainersReady", "containers_ready"),
    ("Ready", "ready"),
)
_ORDER = {name: i for i, name in enumerate(["pod_created"] + [e for _, e in _CONDITIONS])}


def _time(value: object) -> float | None:
    """A Kubernetes time (RFC 3339, ``2026-12-05T01:02:03Z``) as unix seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_start_events(pod: Obj) -> list[Event]:
    """The steps of ``pod``'s start that it records, in time order (ties in the order a start
    goes through them: the times are whole seconds)."""
    events: list[Event] = []
    created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
    if created is not None:
        events.append(("pod_created", created, {}))
    status = pod.get("status") or {}
    conditions = {
        c.get("type"): c
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("status") == "True"
    }
    for kind, name in _CONDITIONS:
        at = _time((conditions.get(kind) or {}).get("lastTransitionTime"))
        if at is not None:
            events.append((name, at, {}))
    for kind, statuses in (
        ("init_container_started", status.get("initContainerStatuses")),
        ("container_started", status.get("containerStatuses")),
    ):
        for c in statuses or []:
            if not isinstance(c, dict):
                continue
            state = c.get("state") or {}
            at = _time((state.get("running") or state.get("terminated") or {}).get("startedAt"))
            if at is not None:
                events.append((kind, at, {"k8s.container.name": str(c.get("name"))}))
    # sorted by time; ties in the order of a start (init containers run before initialized,
    # the others after it)
    rank = {
        **_ORDER,
        "init_container_started": _ORDER["sandbox_ready"] + 0.5,
        "container_started": _ORDER["initialized"] + 0.5,
    }
    events.sort(key=lambda e: (e[1], rank[e[0]]))
    return events


class PodStarts:
    """Reads the start of each pod that becomes ready for a revision someone waits for."""

    def __init__(
        self,
        api: KubeApi,
        endpoints: EndpointSource,
        *,
        wanted: Callable[[str, str], bool],
        started: Callable[[str, str, Sequence[Event], float], None],
    ) -> None:
        self._api = api
        self._endpoints = endpoints
        self._wanted = wanted
        self._started = started
        self._seen: dict[RevisionKey, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed(endpoints.current())
        self._unsubscribe = endpoints.subscribe(self._changed)

    def _changed(self, current: Mapping[RevisionKey, Sequence[PodEndpoint]]) -> None:
        seen: dict[RevisionKey, set[str]] = {}
        for key, pods in current.items():
            names = seen[key] = {p.name for p in pods}
            new = names - self._seen.get(key, set())
            if new and self._wanted(key.namespace, key.name):  # (a pod for a waiting request)
                task = asyncio.get_running_loop().create_task(
                    self._read(key, min(new), time.time())
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._seen = seen

    async def _read(self, key: RevisionKey, pod: str, seen_at: float) -> None:
        try:
            obj = await self._api.get(PODS, key.namespace, pod)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot read a pod's start",
                extra={"revision": str(key), "pod": pod, "error": str(exc)},
            )
            obj = {}
        events = [*pod_start_events(obj), ("endpoint_ready", seen_at, {"k8s.pod.name": pod})]
        self._started(key.namespace, key.name, events, seen_at)

    def close(self) -> None:
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()

"""A cold start's steps on Kubernetes (cluster.kubernetes.podstarts): read from the pod that
became ready, and given to the waiting requests' ``cold_start`` spans (dataplane.tracing), which
reach a real OTLP receiver. The real control plane's test is in tests/k8s/real_control_plane.py
(``test_a_cold_starts_steps_are_read_from_its_pod``, as the activator's ServiceAccount)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cluster.kubernetes.api import PODS, NotFoundError, Obj, Resource
from cluster.kubernetes.podstarts import Event, PodStarts, pod_start_events
from cluster.memory import MemoryEndpoints
from cluster.observability import Tracing
from cluster.ports import PodEndpoint
from cluster.spec import RevisionKey
from dataplane.tracing import ColdStartTraces, Tracer
from tests.otlp_receiver import otlp_receiver

KEY = RevisionKey("default", "iris-00001")


def _at(second: int) -> str:
    return datetime.fromtimestamp(1_790_000_000 + second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, second: int, status: str = "True") -> Obj:
    return {"type": kind, "status": status, "lastTransitionTime": _at(second)}


# A pod as a real kubelet leaves it once ready: an init container (the storage-initializer)
# that ran, two containers, every condition. Times in seconds after 1,790,000,000.
POD: Obj = {
    "metadata": {"name": "iris-00001-abc", "creationTimestamp": _at(0)},
    "status": {
        "phase": "Running",
        "conditions": [  # (the API's order, not the start's)
            _condition("Ready", 9),
            _condition("ContainersReady", 9),
            _condition("PodScheduled", 1),
            _condition("Initialized", 5),
            _condition("PodReadyToStartContainers", 2),
        ],
        "initContainerStatuses": [
            {
                "name": "storage-initializer",
                "state": {"terminated": {"exitCode": 0, "startedAt": _at(2), "finishedAt": _at(5)}},
            }
        ],
        "containerStatuses": [
            {"name": "queue-proxy", "state": {"running": {"startedAt": _at(5)}}},
            {"name": "kserve-container", "state": {"running": {"startedAt": _at(6)}}},
        ],
    },
}


def test_a_pods_start_in_order_from_its_conditions_and_containers() -> None:
    events = pod_start_events(POD)
    got = [(name, int(at) - 1_790_000_000, attrs) for name, at, attrs in events]
    assert got == [
        ("pod_created", 0, {}),
        ("scheduled", 1, {}),
        ("sandbox_ready", 2, {}),
        ("init_container_started", 2, {"k8s.container.name": "storage-initializer"}),
        ("initialized", 5, {}),
        ("container_started", 5, {"k8s.container.name": "queue-proxy"}),
        ("container_started", 6, {"k8s.container.name": "kserve-container"}),
        ("containers_ready", 9, {}),
        ("ready", 9, {}),
    ]


def test_what_a_pod_does_not_record_is_left_out() -> None:
    pod = {
        "metadata": {"creationTimestamp": "not a time"},
        "status": {
            "conditions": [_condition("Ready", 3, status="False"), {"type": "Initialized"}],
            "containerStatuses": [{"name": "m", "state": {"waiting": {"reason": "Pulling"}}}],
        },
    }
    assert pod_start_events(pod) == []
    assert pod_start_events({}) == []


class Pods:
    """The one call PodStarts makes of the API: ``get`` a pod (NotFoundError for others)."""

    def __init__(self, pods: dict[str, Obj]) -> None:
        self.pods = pods
        self.gets: list[str] = []

    async def get(self, resource: Resource, namespace: str, name: str) -> Obj:
        assert (resource, namespace) == (PODS, "default")
        self.gets.append(name)
        if name not in self.pods:
            raise NotFoundError(404, "NotFound", f'pods "{name}" not found')
        return self.pods[name]


def _pod(name: str) -> PodEndpoint:
    return PodEndpoint(name=name, address=f"10.244.0.{len(name)}:8012", stats_address="")


async def test_a_new_ready_pod_is_read_only_when_a_request_waits_for_it() -> None:
    endpoints = MemoryEndpoints()
    api = Pods({"iris-00001-abc": POD})
    waiting: set[tuple[str, str]] = set()
    got: list[tuple[str, str, list[str], float]] = []

    def started(ns: str, rev: str, events: Sequence[Event], end: float) -> None:
        got.append((ns, rev, [e[0] for e in events], end))

    starts = PodStarts(
        api,  # type: ignore[arg-type]
        endpoints,
        wanted=lambda ns, rev: (ns, rev) in waiting,
        started=started,
    )
    try:
        endpoints.set_endpoints(KEY, [_pod("iris-00001-old")])  # nobody waits: not read
        await asyncio.sleep(0)
        assert api.gets == []
        endpoints.set_endpoints(KEY, [])
        waiting.add(("default", "iris-00001"))
        endpoints.set_endpoints(KEY, [_pod("iris-00001-abc")])
        for _ in range(10):
            await asyncio.sleep(0)
        assert api.gets == ["iris-00001-abc"]
        assert len(got) == 1
        assert got[0][:2] == ("default", "iris-00001")
        assert got[0][2][0] == "pod_created"
        assert got[0][2][-2:] == ["ready", "endpoint_ready"]
        # a pod the API no longer has: the start still ends, with what the activator saw
        endpoints.set_endpoints(KEY, [_pod("iris-00001-abc"), _pod("iris-00001-gone")])
        for _ in range(10):
            await asyncio.sleep(0)
        assert got[1][2] == ["endpoint_ready"]
    finally:
        starts.close()


async def test_the_waiting_requests_cold_start_span_carries_the_pods_steps() -> None:
    async with otlp_receiver() as receiver:
        tracer = Tracer("activator", {"k8s.pod.name": "activator-1"})
        tracer.configure(Tracing(protocol="http/protobuf", endpoint=receiver.url, sampling_rate=1))
        traces = ColdStartTraces(tracer)
        try:
            context = tracer.begin([])
            assert context is not None
            wait = tracer.span("throttler_try", context)
            assert not traces.wants("default", "iris-00001")
            traces.waiting("default", "iris-00001", wait)
            assert traces.wants("default", "iris-00001")
            events: list[tuple[str, float, dict[str, Any]]] = [
                *pod_start_events(POD),
                ("endpoint_ready", 1_790_000_009.25, {"k8s.pod.name": "iris-00001-abc"}),
            ]
            traces.started("default", "iris-00001", events, 1_790_000_009.25)
            assert not traces.wants("default", "iris-00001")  # claimed
            wait.end()
            assert await asyncio.to_thread(tracer.flush)
            await receiver.until(lambda spans: len(receiver.named("cold_start")) == 1)
        finally:
            tracer.close()
    (cold,) = receiver.named("cold_start")
    (parent,) = receiver.named("throttler_try")
    assert cold.parent_id == parent.span_id
    assert cold.attributes == {"k8s.namespace.name": "default", "zeroserve.revision": "iris-00001"}
    assert [e[0] for e in cold.events] == [e[0] for e in events]
    assert cold.start_ns == 1_790_000_000 * 10**9
    assert abs(cold.end_ns - 1_790_000_009_250_000_000) < 1000  # (unix seconds as floats)
    assert cold.events[3][2] == {"k8s.container.name": "storage-initializer"}

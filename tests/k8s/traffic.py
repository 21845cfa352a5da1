"""End to end on Kubernetes with real traffic (issue 25): ``tests/k8s/run-real.sh`` runs this file.

deploy/ and the example revision run on a real control plane (etcd, kube-apiserver,
kube-controller-manager) and the real kube-proxy, their pods as processes in network namespaces
(e2e.py, kubelet.py); load comes from a client in a namespace of its own through the activator
Service. Each test prints one line ``[traffic] <test>: sent=… failed=… <transition>=<seconds> …``
(docs/kubernetes.md keeps the numbers of a run). Needs root; run alone on a machine (a lock).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.k8s.e2e import (
    STABLE_WINDOW_S,
    Cluster,
    Record,
    cluster,
    eventually,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

REV1, REV2 = "iris-00001", "iris-00002"
SEL1 = f"serving.knative.dev/revision={REV1}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def k8s() -> AsyncIterator[Cluster]:
    async with cluster() as c:
        yield c


def report(test: str, records: list[Record], **times: float) -> None:
    failed = [r for r in records if r.status != 200]
    retried = sum(1 for r in records if r.attempts > 1)
    spans = " ".join(f"{k}={v:.2f}s" for k, v in times.items())
    print(f"\n[traffic] {test}: sent={len(records)} failed={len(failed)} retried={retried} {spans}")


def failures(records: list[Record]) -> str:
    bad = [r for r in records if r.status != 200]
    return f"{len(bad)} failed, first: {bad[:3]}"


async def at_zero(k8s: Cluster, revision: str) -> bool:
    spec, _ = k8s.timeline.replicas(revision)
    sel = f"serving.knative.dev/revision={revision}"
    return (
        spec == 0
        and k8s.timeline.ready_endpoints(revision) == 0
        and not await k8s.pods("default", sel)
    )


async def test_scale_from_zero_and_back(k8s: Cluster) -> None:
    """A revision at zero gets traffic: it scales up, every request succeeds, then it scales back
    to zero after the window and grace period, its Deployment and EndpointSlices in step."""
    loop = asyncio.get_running_loop()
    # Applied, a revision gets its initial scale (1), then goes to zero without traffic.
    await eventually(lambda: at_zero(k8s, REV1), 90, f"{REV1} at zero before the test")
    mark = len(k8s.timeline.deployments)
    load = await k8s.load(count=300, rate=50, concurrency=4, deadline_s=60)
    records = await load.finish(120)
    assert len(records) == 300
    assert not load.failed, failures(records)
    first = records[0].start
    last_end = max(r.end for r in records)
    scaled_up = next(
        t for t, rev, spec, _ in k8s.timeline.deployments[mark:] if rev == REV1 and spec >= 1
    )
    endpoint = next(
        t for t, rev, n in k8s.timeline.endpoints if rev == REV1 and n >= 1 and t >= scaled_up
    )
    first_ok = min(r.end for r in records)
    # Back to zero: the stable window without requests, then the grace period.
    down = await eventually(
        lambda: k8s.timeline.replicas(REV1)[0] == 0, STABLE_WINDOW_S + 40, "scaled to zero"
    )
    no_slices = await eventually(
        lambda: k8s.timeline.ready_endpoints(REV1) == 0, 10, "no ready endpoints"
    )
    gone = await eventually(lambda: at_zero(k8s, REV1), 60, "pods gone")
    # in step: the slices lose the pods within 2 s of the scale to zero (they go with the delete)
    assert no_slices - down < 2.0, (down, no_slices)
    report(
        "scale-from-zero",
        records,
        first_request_to_scale_up=scaled_up - first,
        scale_up_to_ready_endpoint=endpoint - scaled_up,
        first_request_to_first_response=first_ok - first,
        last_response_to_replicas_0=down - last_end,
        replicas_0_to_no_endpoints=no_slices - down,
        replicas_0_to_pods_gone=gone - down,
        total=loop.time() - first,
    )

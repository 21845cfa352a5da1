"""End to end on Kubernetes with real traffic (issue 25): ``tests/k8s/run-real.sh`` runs this file.

deploy/ and the example revision run on a real control plane (etcd, kube-apiserver,
kube-controller-manager) and the real kube-proxy, their pods as processes in network namespaces
(e2e.py, kubelet.py); load comes from a client in a namespace of its own through the activator
Service. Each test prints one line ``[traffic] <test>: sent=… failed=… <transition>=<seconds> …``
(docs/kubernetes.md keeps the numbers of a run). Needs root; run alone on a machine (a lock).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from cluster.kubernetes.api import CONFIGMAPS, ENDPOINTSLICES, PODS, NotFoundError
from tests.k8s.e2e import (
    NS,
    STABLE_WINDOW_S,
    Cluster,
    Record,
    cluster,
    eventually,
    metric,
)
from tests.k8s.netns import GATEWAY
from tests.otlp_receiver import otlp_receiver

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

REV1, REV2 = "iris-00001", "iris-00002"
SEL1 = f"serving.knative.dev/revision={REV1}"
TARGET = "autoscaling.knative.dev/target"
METRIC = "autoscaling.knative.dev/metric"
ACTIVATORS = "app.kubernetes.io/name=activator"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def k8s() -> AsyncIterator[Cluster]:
    async with cluster() as c:
        yield c


def report(test: str, records: list[Record], **values: float) -> None:
    """One line per test: requests sent, failed, retried, then each transition (``_s``: seconds)."""
    failed = [r for r in records if r.status != 200]
    retried = sum(1 for r in records if r.attempts > 1)
    latency_ms = 1000 * sum(r.end - r.start for r in records) / max(1, len(records))
    spans = " ".join(f"{k}={v:.2f}" for k, v in values.items())
    print(
        f"\n[traffic] {test}: sent={len(records)} failed={len(failed)} retried={retried} "
        f"mean_latency_ms={latency_ms:.1f} {spans}"
    )


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
    # In step: the slices never held more ready pods than the Deployment asked for, lost them
    # within 2 s of the scale to zero (they go with the delete), and the Deployment's status
    # counts none ready at the end.
    asked = max(spec for _, rev, spec, _ in k8s.timeline.deployments[mark:] if rev == REV1)
    over = [
        (t, n) for t, rev, n in k8s.timeline.endpoints if rev == REV1 and t >= first and n > asked
    ]
    assert not over, f"more ready endpoints than replicas ({asked}): {over}"
    assert no_slices - down < 2.0, (down, no_slices)
    await eventually(lambda: k8s.timeline.replicas(REV1) == (0, 0), 10, "0 replicas, 0 ready")
    report(
        "scale-from-zero",
        records,
        first_request_to_scale_up_s=scaled_up - first,
        scale_up_to_ready_endpoint_s=endpoint - scaled_up,
        first_request_to_first_response_s=first_ok - first,
        last_response_to_replicas_0_s=down - last_end,
        replicas_0_to_no_endpoints_s=no_slices - down,
        replicas_0_to_pods_gone_s=gone - down,
        total_s=loop.time() - first,
    )


async def test_activator_deleted_under_load(k8s: Cluster) -> None:
    """One of two activators deleted under load: the requests inside it finish, and a client
    that retries on the other (docs/kubernetes.md, "What a client must do") sees no failure.

    It starts with the revision at zero, and the activator goes while the first requests wait
    inside the activators for the revision's first pod: the one deleted is one that holds some."""
    loop = asyncio.get_running_loop()
    await eventually(lambda: at_zero(k8s, REV1), 60, f"{REV1} at zero")
    ips = [p["status"]["podIP"] for p in await k8s.ready_pods(NS, ACTIVATORS)]
    mark = len(k8s.timeline.deployments)
    load = await k8s.load(count=2000, rate=100, concurrency=4, deadline_s=30)
    inside: dict[str, int] = {}

    async def waiting_inside() -> bool:
        for ip in ips:
            inside[ip] = await metric(k8s, ip, "activator_requests_in_flight")
        return max(inside.values()) >= 1 and k8s.timeline.ready_endpoints(REV1) == 0

    def activated() -> bool:
        return any(rev == REV1 and spec >= 1 for _, rev, spec, _ in k8s.timeline.deployments[mark:])

    await eventually(activated, 20, "the first requests scale the revision from zero")
    await eventually(waiting_inside, 5, "requests waiting inside an activator for the first pod")
    ip = max(ips, key=lambda i: inside[i])
    name = next(
        p["metadata"]["name"] for p in await k8s.pods(NS, ACTIVATORS) if p["status"]["podIP"] == ip
    )
    answered = await metric(k8s, ip, "activator_requests_total")
    deleted = loop.time()
    await k8s.admin.delete(PODS, NS, name)

    async def out_of_service() -> bool:
        return ip not in await service_ready_ips(k8s, NS, "activator")

    removed = await eventually(out_of_service, 20, "the activator Service drops it")

    async def finished_inside() -> bool:
        # nothing inside any more, while it drains, and at least as many answered as were inside
        return await metric(k8s, ip, "activator_requests_in_flight") == 0 and (
            await metric(k8s, ip, "activator_requests_total") >= answered + inside[ip]
        )

    finished = await eventually(finished_inside, 30, "the requests inside it answered")
    exited = await eventually(lambda: gone(k8s, NS, name), 70, "the deleted activator gone")

    async def two_activators() -> bool:
        return len(await k8s.ready_pods(NS, ACTIVATORS)) == 2

    replaced = await eventually(two_activators, 60, "a second activator again")
    records = await load.finish(90)
    report(
        "activator-deleted",
        records,
        inside_it_at_delete=inside[ip],
        delete_to_out_of_service_s=removed - deleted,
        delete_to_requests_inside_answered_s=finished - deleted,
        delete_to_pod_gone_s=exited - deleted,
        delete_to_two_activators_ready_s=replaced - deleted,
    )
    in_flight = [r for r in records if r.start < deleted < r.end]
    assert all(r.status == 200 and r.attempts == 1 for r in in_flight), in_flight
    assert not load.failed, failures(records)


ROUTE_100 = f"- {{revisionName: {REV1}, percent: 100}}\n"
ROUTE_90_10 = f"- {{revisionName: {REV1}, percent: 90}}\n- {{revisionName: {REV2}, percent: 10, tag: canary}}\n"


async def test_canary_split_under_load(k8s: Cluster) -> None:
    """The route edited to 90/10 under load: the canary (from zero) gets 10 % of 1,000
    requests, within 3 points, and no request fails."""
    loop = asyncio.get_running_loop()
    load = await k8s.load(count=1800, rate=100, concurrency=4, deadline_s=40)
    await eventually(lambda: len(load.records) >= 100, 30, "load flowing")
    edited = loop.time()
    try:
        await k8s.set_route(ROUTE_90_10)
        records = await load.finish(90)
    finally:
        await k8s.set_route(ROUTE_100)
    assert not load.failed, failures(records)
    canary = [r for r in records if r.version == "2"]
    assert canary, "no request reached the canary"
    # The first request the canary got was routed by the new split (both activators have it a
    # moment later: each watches the ConfigMap); its answer ends the canary's cold start. The
    # split over the 1,000 requests that start a second after that:
    routed = min(r.start for r in canary)
    warm = min(r.end for r in canary)
    window = [r for r in records if r.start > warm + 1.0][:1000]
    assert len(window) == 1000, len(window)
    share = 100 * sum(r.version == "2" for r in window) / len(window)
    report(
        "canary-90-10",
        records,
        canary_percent_of_1000=share,
        edit_to_first_canary_request_s=routed - edited,
        edit_to_first_canary_response_s=warm - edited,
    )
    assert 7.0 <= share <= 13.0, share


def below_ready(
    changes: list[tuple[float, str, int, int]], revision: str, start: float, end: float
) -> list[Any]:
    """The scale changes of ``revision`` between ``start`` and ``end`` that went below the ready
    count of the Deployment they changed."""
    bad, spec, ready = [], -1, 0
    for t, rev, new_spec, new_ready in changes:
        if rev != revision:
            continue
        if start <= t <= end and spec >= 0 and new_spec != spec and new_spec < ready:
            bad.append((t, spec, ready, new_spec))
        spec, ready = new_spec, new_ready
    return bad


async def service_ready_ips(k8s: Cluster, namespace: str, service: str) -> list[str]:
    slices = await k8s.admin.list(
        ENDPOINTSLICES, namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    return sorted(
        a
        for s in slices.items
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready") is not False
        for a in e["addresses"]
    )


async def gone(k8s: Cluster, namespace: str, name: str) -> bool:
    try:
        await k8s.admin.get(PODS, namespace, name)
    except NotFoundError:
        return True
    return False


async def test_autoscaler_leader_deleted_under_load(k8s: Cluster) -> None:
    """The leader's pod deleted under load: the standby takes the Lease, the autoscaler Service
    follows it, no scale patch goes below the ready count, no request fails.

    The revision scales on requests per second here, 60 per pod (70 %: 42), so that the load
    (100 per second, whatever its latency) needs 3 pods: the new leader has 3 ready pods to keep."""
    loop = asyncio.get_running_loop()
    old = await k8s.lease_holder()
    old_pod = await k8s.admin.get(PODS, NS, old)
    await k8s.set_annotation(REV1, METRIC, "rps")
    await k8s.set_annotation(REV1, TARGET, "60")
    try:
        load = await k8s.load(count=3500, rate=100, concurrency=4, deadline_s=45)
        await eventually(
            lambda: len(load.records) >= 800 and k8s.timeline.replicas(REV1)[1] >= 2,
            40,
            "8 s of load, at least 2 ready pods",
        )
        ready_before = k8s.timeline.replicas(REV1)[1]
        deleted = loop.time()
        await k8s.admin.delete(PODS, NS, old)

        async def new_leader() -> bool:
            return (await k8s.lease_holder()) not in ("", old)

        took_over = await eventually(new_leader, 30, "a standby holds the Lease")
        new = await k8s.lease_holder()
        new_ip = (await k8s.admin.get(PODS, NS, new))["status"]["podIP"]

        async def service_moved() -> bool:
            return await service_ready_ips(k8s, NS, "autoscaler") == [new_ip]

        async def labelled() -> bool:
            pod = await k8s.admin.get(PODS, NS, new)
            return bool(pod["metadata"].get("labels", {}).get("zeroserve.dev/leader") == "true")

        marked = await eventually(labelled, 20, "the new leader labels its pod")
        moved = await eventually(service_moved, 20, "the autoscaler Service selects the new leader")
        old_gone = await eventually(lambda: gone(k8s, NS, old), 60, "the old leader's pod gone")

        async def two_autoscalers() -> bool:
            return len(await k8s.ready_pods(NS, "app.kubernetes.io/name=autoscaler")) == 2

        replaced = await eventually(two_autoscalers, 60, "a second autoscaler again")
        records = await load.finish(90)
    finally:
        await k8s.set_annotation(REV1, METRIC, None)
        await k8s.set_annotation(REV1, TARGET, "3")
    assert old_pod["status"]["podIP"] != new_ip
    assert not load.failed, failures(records)
    # from the delete to the end of the new leader's first stable window (its start-up hold)
    bad = below_ready(k8s.timeline.deployments, REV1, deleted, took_over + STABLE_WINDOW_S)
    report(
        "autoscaler-leader-deleted",
        records,
        ready_pods_at_delete=ready_before,
        delete_to_new_lease_holder_s=took_over - deleted,
        delete_to_new_leader_labelled_s=marked - deleted,
        delete_to_service_on_new_leader_s=moved - deleted,
        delete_to_old_pod_gone_s=old_gone - deleted,
        delete_to_two_autoscalers_ready_s=replaced - deleted,
    )
    assert not bad, f"scaled below the ready count: {bad}"


async def test_model_server_killed_under_load(k8s: Cluster) -> None:
    """A model-server container killed: its pod goes unready, the activator stops sending to it,
    the container restarts and the pod rejoins."""
    loop = asyncio.get_running_loop()
    await k8s.set_annotation(REV1, "autoscaling.knative.dev/min-scale", "2")
    try:
        await eventually(
            lambda: k8s.timeline.ready_endpoints(REV1) == 2, 60, f"2 ready pods of {REV1}"
        )
        victim = (await k8s.ready_pods("default", SEL1))[0]
        name, ip = victim["metadata"]["name"], victim["status"]["podIP"]
        container = k8s.kubelet.worker("default", name).container("user-container")
        assert container.proc is not None
        counts: list[tuple[float, int]] = []  # requests its queue-proxy answered
        ok_counts: list[tuple[float, int]] = []  # ... with a 2xx

        async def sample() -> None:
            while True:
                t = loop.time()
                counts.append((t, await metric(k8s, ip, "queue_proxy_requests_total")))
                ok_counts.append((t, await metric(k8s, ip, "queue_proxy_requests_total", "2xx")))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        load = await k8s.load(count=2500, rate=100, concurrency=4, deadline_s=40)
        await eventually(lambda: len(load.records) >= 300, 30, "3 s of load")
        killed = loop.time()
        os.killpg(container.proc.pid, signal.SIGKILL)

        async def pod_ready(want: bool) -> bool:
            conds = (await k8s.admin.get(PODS, "default", name))["status"]["conditions"]
            return any(c["type"] == "Ready" and (c["status"] == "True") == want for c in conds)

        unready = await eventually(lambda: pod_ready(False), 10, "the pod unready")
        out = await eventually(
            lambda: k8s.timeline.ready_endpoints(REV1) == 1, 10, "one ready endpoint"
        )
        restarted = await eventually(
            lambda: container.restart_count == 1, 30, "the container restarted"
        )
        ready = await eventually(lambda: pod_ready(True), 30, "the pod ready again")
        back = await eventually(
            lambda: k8s.timeline.ready_endpoints(REV1) == 2, 10, "two ready endpoints"
        )
        at_back = ok_counts[-1][1]
        rejoined = await eventually(lambda: ok_counts[-1][1] > at_back, 20, "it answers again")
        records = await load.finish(90)
        sampler.cancel()
    finally:
        await k8s.set_annotation(REV1, "autoscaling.knative.dev/min-scale", "0")
    # While it was out of the EndpointSlices (after 0.3 s for the activators to see it), its
    # queue-proxy answered nothing.
    while_out = [n for t, n in counts if out + 0.3 <= t <= back]
    # Requests fail only at the kill (in flight, or sent before the activators saw the pod
    # leave). None after its return: the kubelet's health check reaches the queue-proxy, which
    # probes the restarted model server afresh (as Knative's does), so the pod is ready again
    # only once the model server listens (docs/kubernetes.md).
    at_kill = [r for r in records if r.status != 200 and r.end <= back]
    after = [r for r in records if r.status != 200 and r.end > back]
    report(
        "model-server-killed",
        records,
        failed_at_kill=len(at_kill),
        failed_after_restart=len(after),
        kill_to_pod_unready_s=unready - killed,
        kill_to_endpoint_unready_s=out - killed,
        kill_to_restart_s=restarted - killed,
        kill_to_pod_ready_s=ready - killed,
        kill_to_endpoint_ready_s=back - killed,
        kill_to_first_answer_again_s=rejoined - killed,
        samples_while_out=len(while_out),
    )
    assert while_out, "no sample of its queue-proxy while it was out"
    assert len(set(while_out)) == 1, f"requests reached the pod while it was out: {while_out}"
    assert not after, failures(after)


async def test_a_traced_cold_start_shows_its_pods_steps(k8s: Cluster) -> None:
    """Tracing on by config-observability (no restart): a request that waits for a revision
    at zero gets a cold_start span, under its throttler_try, with the steps of the pod's start
    as Kubernetes recorded them (the activator reads the pod as its own ServiceAccount)."""
    await eventually(lambda: at_zero(k8s, REV1), STABLE_WINDOW_S + 60, f"{REV1} at zero")
    async with otlp_receiver(GATEWAY) as receiver:  # (the node's address: pods reach it)
        on = {
            "tracing-protocol": "http/protobuf",
            "tracing-endpoint": receiver.url,
            "tracing-sampling-rate": "1",
        }
        await k8s.admin.patch(CONFIGMAPS, NS, "config-observability", {"data": on})
        try:
            await asyncio.sleep(2)  # (both activators see the change: each watches it)
            load = await k8s.load(count=4, rate=2, concurrency=1, deadline_s=60)
            records = await load.finish(90)
            assert not load.failed, failures(records)
            await receiver.until(lambda spans: bool(receiver.named("cold_start")), 30)
        finally:
            off = {"tracing-protocol": "none", "tracing-endpoint": ""}
            await k8s.admin.patch(CONFIGMAPS, NS, "config-observability", {"data": off})
    cold = receiver.named("cold_start")[0]
    waits = {s.span_id: s for s in receiver.named("throttler_try")}
    assert cold.parent_id in waits
    assert waits[cold.parent_id].attributes["zeroserve.cold"] is True
    assert cold.attributes["zeroserve.revision"] == REV1
    names = [e[0] for e in cold.events]
    for step in ("pod_created", "scheduled", "initialized", "container_started", "ready"):
        assert step in names, names
    assert names[-1] == "endpoint_ready"
    started = {e[2].get("k8s.container.name") for e in cold.events if e[0] == "container_started"}
    assert "queue-proxy" in started, started
    report(
        "traced-cold-start",
        records,
        cold_start_span_s=cold.seconds,
        steps=len(names),
    )

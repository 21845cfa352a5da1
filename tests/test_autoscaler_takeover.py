"""A new autoscaler leader over a busy revision (issue 19, item 3): two replicas, each with its
own real MultiScaler, Collector and LeaderScaleTarget, campaigning with real LeaderElectors for a
Lease on the in-repo API server, all driven second by second under one ManualClock.

The load: 5 ready pods, a steady 35 concurrent requests at target 7 (CC 10 x 0.7), so 5 pods is
right all along. Every queue-proxy stat is proxied (the activator is always in the path), so the
scraped stat, which every replica records, nets to 0; only the leader gets the activators' stats,
which carry the load. Replica A leads from the start and dies at t=165 s; its Lease expires and B
takes over at t=180 s; the activators' stats reach B from t=182 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from kubernetes.aio import client

from autoscaler.collector import Collector
from autoscaler.multiscaler import MultiScaler
from autoscaler.status import AutoscalerMetrics
from cluster.kubernetes.api import AioKubeApi
from cluster.kubernetes.leader import LeaderElector
from cluster.kubernetes.runtime import LeaderScaleTarget
from cluster.memory import MemoryScaleTarget
from cluster.spec import Revision, RevisionKey
from metrics.clock import ManualClock
from metrics.stat import Stat
from tests.k8s.fakeapi import FakeApiServer

KEY = RevisionKey("default", "rev-1")
REVISION = Revision(namespace="default", service="svc", name="rev-1", container_concurrency=10)
READY = 5
STAT_DELAY_S = 2  # from becoming leader to the first activator stat (they reconnect)


class Deployment(MemoryScaleTarget):
    """The revision's Deployment as every replica sees it: ``spec.replicas`` (``desired``), the
    patches (``calls``), and pods that are ready as soon as they are asked for."""

    def __init__(self, replicas: int, clock: ManualClock) -> None:
        super().__init__()
        self.desired[KEY] = replicas
        self.ready[KEY] = replicas
        self._clock = clock
        self._t0 = clock.wall()
        self.patches: list[tuple[int, int, int]] = []
        """(second, from, to) of every patch."""

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        before = self.desired.get(key, 0)
        await super().set_scale(key, replicas)
        self.ready[key] = replicas
        self.patches.append((round(self._clock.wall() - self._t0), before, replicas))

    async def current_scale(self, key: RevisionKey) -> int | None:
        return self.desired.get(key)


@dataclass
class Replica:
    name: str
    elector: LeaderElector
    collector: Collector
    scaler: MultiScaler
    alive: bool = True
    leading_since: int | None = None
    applied: dict[int, int | None] = field(default_factory=dict)
    """What the replica's status says it applied, by second."""


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval_s=0.05)
    await srv.start()
    yield srv
    await srv.close()


@dataclass
class Cluster:
    clock: ManualClock
    deployment: Deployment
    replicas: list[Replica]
    t: int = 0

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    async def run(
        self, until: int, *, crash: dict[str, int], load: Callable[[int], float] = lambda t: 35.0
    ) -> None:
        """Second by second up to ``until``: elections and ticks every 2 s, stats every second."""
        while self.t < until:
            self.t += 1
            t = self.t
            self.clock.advance(1.0)
            now = self.clock.wall()
            for r in self.replicas:
                if r.alive and crash.get(r.name) == t:
                    r.alive = False  # the pod is gone: no renewals, no ticks, no stats
            alive = [r for r in self.replicas if r.alive]
            if t % 2 == 0:
                for r in alive:
                    await r.elector.step()
                    if r.elector.is_leader and r.leading_since is None:
                        r.leading_since = t
            conc = load(t)
            # The scraper's revision-wide stat: all of it came through the activator.
            scraped = Stat(
                pod_name="scraped",
                average_concurrent_requests=conc,
                average_proxied_concurrent_requests=conc,
                request_count=conc,
                proxied_request_count=conc,
                timestamp=int(now),
            )
            for r in alive:
                r.collector.record(KEY, scraped, now)
            leader = next((r for r in alive if r.elector.is_leader), None)
            if (
                leader is not None
                and leader.leading_since is not None
                and t >= leader.leading_since + STAT_DELAY_S
            ):
                activator = Stat(
                    pod_name="activator-0",
                    average_concurrent_requests=conc,
                    request_count=conc,
                    timestamp=int(now),
                )
                leader.collector.record(KEY, activator, now)
            if t % 2 == 0:
                for r in alive:
                    await r.scaler.tick()
            for r in alive:
                r.applied[t] = next(s.applied for s in r.scaler.status() if s.revision == KEY.name)


@pytest.fixture
async def cluster(server: FakeApiServer) -> AsyncIterator[Cluster]:
    clock = ManualClock(1_700_000_000.0)
    deployment = Deployment(READY, clock)
    apis: list[AioKubeApi] = []
    replicas = []
    for name in ("a", "b"):
        api = AioKubeApi(client.ApiClient(client.Configuration(host=server.url)))
        apis.append(api)
        elector = LeaderElector(
            api, "zeroserve-system", "zs-autoscaler", name, clock=clock.monotonic
        )
        collector = Collector()
        scaler = MultiScaler(
            collector=collector,
            scale_target=LeaderScaleTarget(deployment, elector),
            clock=clock,
            metrics=AutoscalerMetrics(),
        )
        await scaler.sync_revisions({KEY: REVISION})
        replicas.append(Replica(name, elector, collector, scaler))
    yield Cluster(clock, deployment, replicas)
    for r in replicas:
        await r.scaler.close()
    for api in apis:
        await api.close()


async def test_a_replica_that_leads_throughout_makes_no_patch(cluster: Cluster) -> None:
    await cluster.run(400, crash={})
    a, b = cluster.replica("a"), cluster.replica("b")
    assert a.elector.is_leader
    assert not b.elector.is_leader
    assert cluster.deployment.patches == []
    assert a.applied[400] == READY


async def test_a_new_leader_keeps_a_busy_revision_at_its_scale(cluster: Cluster) -> None:
    """The new leader starts from the Deployment's real scale and never goes below the ready
    count; before the takeover, the standby records no scale as applied."""
    await cluster.run(400, crash={"a": 165})
    b = cluster.replica("b")
    assert b.leading_since == 180
    # Issue 19 saw (206, 5, 3), (218, 3, 4), (230, 4, 5). No patch at all is right: 5 pods
    # serve 35 at target 7.
    assert cluster.deployment.patches == []
    # A standby writes nothing, so it records nothing as applied.
    assert {b.applied[t] for t in range(1, 180)} == {None}
    assert b.applied[181] == READY  # read from the Deployment at the takeover
    assert b.applied[400] == READY


async def test_a_new_leader_scales_down_after_a_stable_window_of_its_own(
    cluster: Cluster,
) -> None:
    """The floor holds only while the new leader's history is missing: when the load falls at
    the takeover, it scales down once a whole stable window (60 s) of its own data says so."""
    await cluster.run(400, crash={"a": 165}, load=lambda t: 35.0 if t < 180 else 14.0)
    # Start-up panic from the takeover (t=180) until a stable window later: panic ends on the
    # first tick past 240 s (strictly), and then ceil(14 / 7) = 2 pods; the down rate (2)
    # allows 5 → floor(5 / 2) = 2 in one step.
    assert cluster.deployment.patches == [(242, 5, 2)]


async def test_leading_again_starts_from_the_deployments_real_scale(cluster: Cluster) -> None:
    """Leadership lost and regained is a new term: the replica forgets what it applied, then
    reads the Deployment's scale (another leader may have changed it) and keeps that as its
    floor for a stable window."""
    await cluster.run(100, crash={})
    a = cluster.replica("a")
    assert a.elector.terms == 1
    a.elector._step_down()  # what a renewal failing past the deadline does
    await a.scaler.tick()
    assert [s.applied for s in a.scaler.status()] == [None]
    # Meanwhile another leader scaled the revision to 7.
    cluster.deployment.desired[KEY] = cluster.deployment.ready[KEY] = 7
    await cluster.run(160, crash={})  # a's next step (t=102) renews the Lease it still holds
    assert a.elector.terms == 2
    assert a.applied[102] == 7
    assert cluster.deployment.patches == []
    await cluster.run(200, crash={})
    # Start-up panic from t=102 ends on the first tick past 162 s; then ceil(35 / 7) = 5.
    assert cluster.deployment.patches == [(164, 7, 5)]

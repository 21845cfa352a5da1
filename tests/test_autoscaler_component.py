"""The autoscaler end to end in one process: scripted queue-proxies on loopback, a websocket
activator client, in-memory ports, and a manual clock (no real waiting on windows)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from autoscaler.engine import Autoscaler, build_autoscaler
from autoscaler.statserver import build_stat_app
from autoscaler.status import build_status_app
from cluster.memory import MemoryConfig, MemoryEndpoints, MemoryRevisions, MemoryScaleTarget
from cluster.spec import Revision, RevisionKey
from metrics.clock import ManualClock
from metrics.stat import Stat, WireStat, encode_batch
from tests.test_autoscaler_fakes import FakePod, fake_pods

KEY = RevisionKey("default", "rev-1")
T0 = 1_700_000_000.0


def revision(annotations: Mapping[str, str] | None = None, cc: int = 10) -> Revision:
    # CC 10, target utilization 0.7 → target 7 per pod.
    return Revision(
        namespace=KEY.namespace,
        service="svc",
        name=KEY.name,
        container_concurrency=cc,
        annotations=dict(annotations or {}),
    )


class EventScaleTarget(MemoryScaleTarget):
    """The in-memory scale target, plus an event set on every ``set_scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def set_scale(self, key: RevisionKey, replicas: int) -> None:
        await super().set_scale(key, replicas)
        self.changed.set()


@dataclass
class Harness:
    clock: ManualClock
    revisions: MemoryRevisions
    endpoints: MemoryEndpoints
    target: EventScaleTarget
    config: MemoryConfig
    autoscaler: Autoscaler
    pods: list[FakePod]

    @property
    def applied(self) -> int | None:
        return self.target.desired.get(KEY)

    def load(self, conc: float) -> None:
        """Total concurrency ``conc`` spread over the pods."""
        for pod in self.pods:
            pod.serve(conc=conc / len(self.pods), rps=conc / len(self.pods))

    async def run(self, seconds: int) -> None:
        """Advance time second by second: a scrape every second, a decision every 2 s."""
        for _ in range(seconds):
            self.clock.advance(1.0)
            await self.autoscaler.scrape_once()
            if int(self.clock.monotonic()) % 2 == 0:
                await self.autoscaler.tick()

    def follow_scale(self) -> None:
        """Pods become ready as asked (the endpoints stay the scripted pods)."""
        if self.applied is not None:
            self.target.ready[KEY] = self.applied


@asynccontextmanager
async def harness(
    *,
    pods: int = 1,
    ready: int | None = None,
    rev: Revision | None = None,
    config: Mapping[str, str] | None = None,
    scrape_timeout_s: float = 0.5,
    mark_initialized: bool = False,
) -> AsyncIterator[Harness]:
    clock = ManualClock(T0)
    async with fake_pods(pods, started_at=T0 - 3600) as fakes:
        revisions = MemoryRevisions({KEY: rev or revision()})
        endpoints = MemoryEndpoints()
        endpoints.set_endpoints(KEY, [p.endpoint for p in fakes])
        target = EventScaleTarget()
        target.ready[KEY] = pods if ready is None else ready
        if mark_initialized:
            await target.mark_initialized(KEY)
        cfg = MemoryConfig(config)
        autoscaler = build_autoscaler(
            revisions,
            endpoints,
            target,
            cfg,
            clock,
            run_loops=False,
            scrape_timeout_s=scrape_timeout_s,
        )
        await autoscaler.start()
        try:
            yield Harness(clock, revisions, endpoints, target, cfg, autoscaler, fakes)
        finally:
            await autoscaler.close()


async def test_rising_load_scales_up_by_the_expected_amount() -> None:
    # Panic threshold 1000 % keeps this in stable mode: 42 in flight, target 7 → 6 pods.
    rev = revision({"autoscaling.knative.dev/panic-threshold-percentage": "1000"})
    async with harness(rev=rev) as h:
        assert h.target.calls == []  # one ready pod at start: its scale is kept
        h.load(7)
        await h.run(60)
        assert h.applied is None  # 7 → 1 pod: no change
        h.load(42)
        await h.run(60)
        scales = [n for _, n in h.target.calls]
        assert scales == sorted(scales)
        assert h.applied == 6
        change = h.autoscaler.status()[0].last_change
        assert change is not None
        assert change.reason == "stable"
        assert change.to_scale == 6


async def test_a_burst_enters_panic_and_the_scale_never_falls_while_panicking() -> None:
    async with harness() as h:
        h.load(7)
        await h.run(20)
        h.load(70)  # 70 / 7 = 10 pods on one: 10 ≥ 2 × 1 → panic
        await h.run(8)  # a whole panic window (6 s) of the burst
        h.follow_scale()
        status = h.autoscaler.status()[0]
        assert status.panicking
        assert h.applied == 10
        assert status.last_change is not None
        assert status.last_change.reason == "panic"
        h.load(0)
        seen: list[int] = []
        for _ in range(120):
            await h.run(1)
            h.follow_scale()
            if not h.autoscaler.status()[0].panicking:
                break
            assert h.applied is not None
            seen.append(h.applied)
        assert seen
        assert seen == sorted(seen)  # never falls while panicking
        assert not h.autoscaler.status()[0].panicking
        await h.run(4)
        assert h.applied is not None
        assert h.applied < 10  # out of panic: down (by at most the scale-down rate)


async def test_no_traffic_scales_to_zero_after_the_stable_window_and_grace() -> None:
    async with harness() as h:
        h.load(0)
        await h.run(56)
        assert h.applied is None  # one pod kept while active for less than a stable window
        await h.run(60 + 30 - 56 - 3)
        assert h.applied is None  # inactive, but the grace period (30 s) has not passed yet
        await h.run(3 + 4)
        assert h.applied == 0
        change = h.autoscaler.status()[0].last_change
        assert change is not None
        assert (change.from_scale, change.to_scale, change.reason) == (1, 0, "to zero")


async def _stat_scales_up_within_100ms(h: Harness) -> None:
    """An activator's first stat over the websocket: a scale-up must follow at once (a poke)."""
    runner = web.AppRunner(build_stat_app(h.autoscaler.record_stats))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            stat = Stat(pod_name="activator", average_concurrent_requests=1, request_count=1)
            h.target.changed.clear()
            await ws.send_str(
                encode_batch([WireStat(namespace=KEY.namespace, revision=KEY.name, stat=stat)])
            )
            try:
                await asyncio.wait_for(h.target.changed.wait(), 0.1)
            except TimeoutError:
                pytest.fail("no scale-up within 100 ms of the stat")
            assert h.applied == 1
    finally:
        await runner.cleanup()
    change = h.autoscaler.status()[0].last_change
    assert change is not None
    assert (change.from_scale, change.to_scale, change.reason) == (0, 1, "activation")


async def test_a_stat_at_zero_scales_up_within_100ms() -> None:
    async with harness() as h:
        h.load(0)
        await h.run(100)
        assert h.applied == 0
        h.target.ready[KEY] = 0
        h.endpoints.set_endpoints(KEY, [])
        await h.run(2)
        await _stat_scales_up_within_100ms(h)


async def test_a_new_revision_at_zero_scales_up_on_its_first_stat() -> None:
    """Initial scale 0: no decision has been made yet when the first request comes; the poke
    must not wait for the first tick (up to 2 s)."""
    rev = revision({"autoscaling.knative.dev/initial-scale": "0"})
    async with harness(pods=0, ready=0, rev=rev, config={"allow-zero-initial-scale": "true"}) as h:
        assert h.applied == 0
        assert h.autoscaler.status()[0].desired == -1  # no decision yet
        await _stat_scales_up_within_100ms(h)


async def test_a_restart_keeps_the_scale() -> None:
    # Five ready pods with little load (7 → 1 pod): a new autoscaler starts in panic and keeps 5.
    async with harness(pods=5) as h:
        h.load(7)
        assert h.autoscaler.status()[0].panicking
        await h.run(58)
        assert h.target.calls == []
        assert h.autoscaler.status()[0].applied == 5
        await h.run(10)  # a stable window after start, panic ends and the scale follows the load
        assert h.applied is not None
        assert h.applied < 5


async def test_a_restart_keeps_a_revision_at_zero() -> None:
    """The target remembers the revision reached its initial scale before: an autoscaler that
    starts over it at zero leaves it there (no initial scale), until a request pokes it."""
    async with harness(pods=0, ready=0, mark_initialized=True) as h:
        assert h.autoscaler.status()[0].applied == 0
        await h.run(30)
        assert h.target.calls == []  # no initial scale of 1
        await _stat_scales_up_within_100ms(h)


async def test_a_new_revision_is_marked_initialized_once_at_its_initial_scale() -> None:
    async with harness(pods=0, ready=0) as h:
        assert h.target.calls == [(KEY, 1)]  # a new revision: its initial scale
        assert not await h.target.initialized(KEY)
        await h.run(2)
        assert not await h.target.initialized(KEY)  # not ready yet
        h.target.ready[KEY] = 1
        await h.run(2)
        assert await h.target.initialized(KEY)


async def test_a_config_change_applies_at_the_next_tick() -> None:
    async with harness(rev=revision(cc=0)) as h:  # CC 0: target 100 × 0.7 = 70
        h.load(35)
        await h.run(10)
        assert h.applied is None  # 35 / 70 → 1 pod
        h.config.set({"container-concurrency-target-default": "10"})
        assert h.autoscaler.status()[0].target == 70  # not before the tick
        await h.run(2)
        assert h.autoscaler.status()[0].target == 7
        assert h.applied == 5  # 35 / 7


async def test_an_invalid_config_is_rejected_and_the_last_good_one_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with harness(config={"stable-window": "30s"}) as h:
        with caplog.at_level(logging.ERROR, logger="zeroserve.autoscaler"):
            h.config.set({"stable-window": "3s", "max-scale-up-rate": "1"})
        await h.run(2)
        assert h.autoscaler.config.stable_window_s == 30
        rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert len(rejected) == 1
        assert set(rejected[0].__dict__["keys"]) == {"stable-window", "max-scale-up-rate"}


async def test_a_pod_that_stops_answering() -> None:
    # Two pods, both sampled (n = 2): one stops answering → every scrape fails, nothing is
    # recorded; after a whole stable window without data there is no decision (§1.2, §2.2).
    async with harness(pods=2, scrape_timeout_s=0.2) as h:
        h.load(14)
        await h.run(70)
        assert h.autoscaler.status()[0].desired == 2
        h.pods[1].hang = True  # times out (0.2 s here, 3 s by default)
        await h.run(1)
        h.pods[1].hang = False
        h.pods[1].status = 503  # then refuses
        await h.run(57)
        status = h.autoscaler.status()[0]
        assert status.desired == 2  # the trailing data still decides
        assert status.has_data
        await h.run(6)
        # A window after the last stat there is no data: no decision any more. (At exactly one
        # window the linear average is already 0 while the window is not yet empty, as in
        # Knative, so one decision may see 0 and step down by the scale-down rate.)
        status = h.autoscaler.status()[0]
        assert not status.has_data
        desired, applied = status.desired, h.applied
        await h.run(120)
        status = h.autoscaler.status()[0]
        assert (status.desired, h.applied) == (desired, applied)  # no scale to zero
        assert applied != 0
        errors = h.autoscaler.metrics.registry.get_sample_value(
            "autoscaler_scrape_errors_total", {"namespace": "default", "revision": "rev-1"}
        )
        assert errors == 1 + 57 + 6 + 120


async def test_with_five_pods_one_failing_the_scrape_still_counts() -> None:
    async with harness(pods=5) as h:
        h.load(35)
        h.pods[0].status = 500
        await h.run(70)
        # n = 4 of 5 answer with 7 each → 28 / 4 * 5 = 35 → 5 pods (target 7).
        assert h.autoscaler.status()[0].stable_concurrency == 35
        assert h.autoscaler.status()[0].desired == 5


async def test_revisions_appear_change_and_disappear() -> None:
    async with harness() as h:
        other = Revision(namespace="default", service="svc", name="rev-2", container_concurrency=10)
        h.revisions.set({KEY: revision(), other.key: other})
        await h.run(2)
        assert h.target.desired[other.key] == 1  # a new revision gets its initial scale
        changed = revision({"autoscaling.knative.dev/min-scale": "3"})
        h.revisions.set({KEY: changed})
        await h.run(2)
        assert [s.revision for s in h.autoscaler.status()] == ["rev-1"]
        assert h.applied == 3
        assert h.autoscaler.status()[0].last_change is not None


async def test_status_and_metrics_endpoints() -> None:
    async with harness() as h:
        h.load(7)
        await h.run(4)
        runner = web.AppRunner(build_status_app(h.autoscaler.status, h.autoscaler.metrics))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/v1/revisions") as resp:
                    body = await resp.json()
                async with session.get(base + "/metrics") as resp:
                    text = await resp.text()
        finally:
            await runner.cleanup()
        row = body["revisions"][0]
        assert row["namespace"] == "default"
        assert row["revision"] == "rev-1"
        assert row["desired"] == 1
        assert row["ready"] == 1
        assert row["panicking"] is False
        assert row["target"] == 7
        assert row["observed"]["stable_concurrency"] == 7
        assert row["observed"]["stable_rps"] == 7
        assert 'autoscaler_desired_pods{namespace="default",revision="rev-1"} 1.0' in text
        assert "autoscaler_decision_duration_seconds_count" in text
        assert "autoscaler_scrape_duration_seconds_count" in text

"""The activator's endpoint prober retries a new pod fast at first (activator/prober.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from activator.prober import EndpointProber, retry_delays
from cluster.memory import MemoryEndpoints
from cluster.ports import PodEndpoint
from cluster.spec import RevisionKey

KEY = RevisionKey("default", "gpu-v1")


@pytest.mark.parametrize(
    ("initial_s", "period_s", "want"),
    [
        pytest.param(0.01, 0.2, [0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2], id="doubling-to-200ms"),
        pytest.param(0.05, 0.05, [0.05, 0.05, 0.05], id="initial-equals-period"),
        pytest.param(0.01, 0.005, [0.005, 0.005], id="period-below-initial-caps-it"),
    ],
)
def test_retry_delays(initial_s: float, period_s: float, want: list[float]) -> None:
    got = list(itertools.islice(retry_delays(initial_s, period_s), len(want)))
    assert got == pytest.approx(want)


class FlakyQueueProxy:
    """Answers the activator's probe 503 ``fail_first`` times, then 200 ``queue``."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.probes = 0
        self.address = ""

    async def healthz(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.probes <= self.fail_first:
            return web.Response(status=503, text="model server not ready\n")
        return web.Response(text="queue")


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyQueueProxy]:
    qp = FlakyQueueProxy(fail_first=3)
    app = web.Application()
    app.router.add_get("/healthz", qp.healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    qp.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield qp
    await runner.cleanup()


async def test_a_pod_failing_its_first_probes_is_retried_before_the_period(
    flaky: FlakyQueueProxy,
) -> None:
    # A 60 s period: at that pace the 4th probe would come 3 minutes after the 1st, far beyond
    # this test's timeout; the fast first retries (10, 20, 40 ms) find the pod healthy.
    endpoints = MemoryEndpoints()
    healthy = asyncio.Event()
    prober = EndpointProber(
        endpoints,
        lambda _k, addrs: healthy.set() if addrs else None,
        probe_period_s=60.0,
        probe_initial_period_s=0.01,
    )
    task = asyncio.create_task(prober.run())
    try:
        endpoints.set_endpoints(
            KEY, [PodEndpoint(name="p", address=flaky.address, stats_address="")]
        )
        await asyncio.wait_for(healthy.wait(), 20)
        assert flaky.probes == 4
        assert prober.healthy(KEY) == (flaky.address,)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

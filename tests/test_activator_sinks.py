"""Stat sinks (in-process, websocket against a real aiohttp server) and the endpoint prober."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from activator.prober import EndpointProber, probe
from activator.sinks import InProcessStatSink, WebsocketStatSink, aggregate
from cluster.memory import MemoryEndpoints
from cluster.ports import PodEndpoint
from cluster.spec import RevisionKey
from metrics.stat import Stat, WireStat, decode_batch

KEY = RevisionKey("default", "iris-v1")


def ws_stat(rev: str, conc: float, count: float, ts: int = 0) -> WireStat:
    return WireStat(
        namespace="default",
        revision=rev,
        stat=Stat(
            pod_name="act", average_concurrent_requests=conc, request_count=count, timestamp=ts
        ),
    )


async def poll(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_in_process_sink_delivers_batches() -> None:
    got: list[list[WireStat]] = []
    sink = InProcessStatSink(got.append)
    sink.put([])
    sink.put([ws_stat("a", 1, 1)])
    assert [len(b) for b in got] == [1]


def test_aggregate_sums_counts_and_averages_concurrency() -> None:
    out = aggregate([ws_stat("a", 1, 1, ts=10), ws_stat("b", 4, 2), ws_stat("a", 3, 5, ts=12)])
    by_rev = {s.revision: s.stat for s in out}
    assert by_rev["a"].request_count == 6
    assert by_rev["a"].average_concurrent_requests == 2
    assert by_rev["a"].timestamp == 12
    assert by_rev["b"].request_count == 2


@dataclass
class StatServer:
    batches: list[list[WireStat]] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.batches.append(decode_batch(msg.data))
        return ws

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for ws in self.sockets:
            await ws.close()
        self.sockets.clear()
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def stat_server() -> AsyncIterator[StatServer]:
    server = StatServer()
    await server.start()
    yield server
    if server.runner is not None:
        await server.runner.cleanup()


async def test_websocket_sink_sends_and_aggregates_across_reconnect(
    stat_server: StatServer,
) -> None:
    sink = WebsocketStatSink(
        f"ws://127.0.0.1:{stat_server.port}/",
        initial_backoff_s=0.02,
        max_backoff_s=0.05,
        rng=random.Random(1),
    )
    sink.put([ws_stat("a", 1, 1)])  # before the first connection: held, not dropped
    task = asyncio.create_task(sink.run())
    try:
        await asyncio.wait_for(sink.wait_connected(), 5)
        await poll(lambda: len(stat_server.batches) == 1)
        sink.put([ws_stat("a", 2, 3), ws_stat("b", 1, 1)])
        await poll(lambda: len(stat_server.batches) == 2)
        assert [len(b) for b in stat_server.batches] == [1, 2]

        port = stat_server.port
        await stat_server.stop()  # the autoscaler goes away
        await poll(lambda: not sink.connected)
        sink.put([ws_stat("a", 1, 2)])
        sink.put([ws_stat("a", 3, 4)])
        await poll(lambda: sink.errors >= 1)  # a reconnect attempt failed
        await stat_server.start(port)
        await poll(lambda: len(stat_server.batches) == 3)
        (merged,) = stat_server.batches[2]
        assert merged.stat.request_count == 6
        assert merged.stat.average_concurrent_requests == 2
        assert sink.connects == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- the endpoint prober --------------------------------------------------------------------


@dataclass
class FakeQueueProxy:
    body: bytes = b"queue"
    status: int = 200
    probes: int = 0
    runner: web.AppRunner | None = None
    address: str = ""

    async def healthz(self, request: web.Request) -> web.Response:
        self.probes += 1
        assert request.headers["K-Network-Probe"] == "queue"
        assert request.headers["User-Agent"] == "Knative-Activator-Probe"
        return web.Response(status=self.status, body=self.body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def qp() -> AsyncIterator[FakeQueueProxy]:
    fake = FakeQueueProxy()
    await fake.start()
    yield fake
    assert fake.runner is not None
    await fake.runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "want"),
    [
        pytest.param(200, b"queue", True, id="healthy"),
        pytest.param(200, b"ok", False, id="wrong-body"),
        pytest.param(503, b"queue", False, id="not-ready"),
    ],
)
async def test_probe(qp: FakeQueueProxy, status: int, body: bytes, want: bool) -> None:
    qp.status, qp.body = status, body
    async with aiohttp.ClientSession() as session:
        assert await probe(session, qp.address, 0.3) is want


async def test_probe_refused_is_unhealthy() -> None:
    async with aiohttp.ClientSession() as session:
        assert not await probe(session, "127.0.0.1:1", 0.3)


async def test_prober_adds_after_probe_and_removes_at_once(qp: FakeQueueProxy) -> None:
    endpoints = MemoryEndpoints()
    seen: list[tuple[str, ...]] = []
    qp.status = 503
    prober = EndpointProber(endpoints, lambda _k, addrs: seen.append(addrs), probe_period_s=0.02)
    task = asyncio.create_task(prober.run())
    try:
        endpoints.set_endpoints(KEY, [PodEndpoint(name="p", address=qp.address, stats_address="")])
        await poll(lambda: qp.probes >= 2)  # re-probed while unhealthy
        assert seen == []
        qp.status = 200
        await poll(lambda: seen == [(qp.address,)])
        assert prober.healthy(KEY) == (qp.address,)
        endpoints.set_endpoints(KEY, [])
        assert seen[-1] == ()  # synchronously: no new request from now on
        assert prober.pending() == {}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

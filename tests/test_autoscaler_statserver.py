"""The activators' websocket endpoint, with a real websocket client on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from autoscaler.statserver import build_stat_app, close_sockets
from metrics.stat import Stat, WireStat, encode_batch


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[WireStat]] = []
        self.event = asyncio.Event()

    def __call__(self, batch: list[WireStat]) -> None:
        self.batches.append(batch)
        self.event.set()

    async def next(self) -> list[WireStat]:
        await asyncio.wait_for(self.event.wait(), 5)
        self.event.clear()
        return self.batches[-1]


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Sink, web.AppRunner]]:
    sink = Sink()
    runner = web.AppRunner(build_stat_app(sink))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", sink, runner
    await runner.cleanup()


def wire(rev: str, conc: float) -> WireStat:
    return WireStat(
        namespace="default",
        revision=rev,
        stat=Stat(pod_name="activator-1", average_concurrent_requests=conc, request_count=1),
    )


async def test_batches_reach_the_sink_and_bad_messages_are_skipped(
    server: tuple[str, Sink, web.AppRunner],
) -> None:
    url, sink, _ = server
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "/") as ws:
        await ws.send_str(encode_batch([wire("a", 1.0), wire("b", 2.0)]))
        assert await sink.next() == [wire("a", 1.0), wire("b", 2.0)]
        await ws.send_str("not json")
        await ws.send_str('{"messages": [{"namespace": "", "name": "x", "stat": {}}]}')
        await ws.send_str(encode_batch([wire("c", 3.0)]))
        assert await sink.next() == [wire("c", 3.0)]
    assert len(sink.batches) == 2


async def test_kubelet_probe_gets_200(server: tuple[str, Sink, web.AppRunner]) -> None:
    url, _, _ = server
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/", headers={"User-Agent": "kube-probe/1.30"}) as resp,
    ):
        assert resp.status == 200


async def test_shutdown_closes_with_1012(server: tuple[str, Sink, web.AppRunner]) -> None:
    url, sink, runner = server
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "/") as ws:
        await ws.send_str(encode_batch([wire("a", 1.0)]))
        await sink.next()
        await runner.shutdown()
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.SERVICE_RESTART


async def test_losing_leadership_closes_sockets_so_activators_reconnect(
    server: tuple[str, Sink, web.AppRunner],
) -> None:
    url, sink, runner = server
    app = runner.app
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "/") as ws:
        await ws.send_str(encode_batch([wire("a", 1.0)]))
        await sink.next()
        assert await close_sockets(app, "not the leader any more") == 1
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.SERVICE_RESTART
        assert msg.extra == "not the leader any more"
        # The server still serves: a reconnecting activator is accepted (here: not the leader's
        # Service any more, but the same app stands in for it).
        async with session.ws_connect(url + "/") as again:
            await again.send_str(encode_batch([wire("b", 2.0)]))
            assert await sink.next() == [wire("b", 2.0)]

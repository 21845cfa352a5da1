"""The benchmark's floor, ``loadtests.relay``: it must relay HTTP both ways, or its numbers mean
nothing."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from loadtests import relay
from tests.dataplane_fixtures import run_app, upstream_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_relay_passes_requests_and_responses_both_ways() -> None:
    async with run_app(upstream_app()) as (_, up):
        port = _free_port()
        task = asyncio.create_task(relay.serve(port, up))
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(50):  # until it listens
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{port}/count", data=b"x" * 100_000
                        ) as resp:
                            assert resp.status == 200
                            assert await resp.text() == "100000"
                        break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the relay never listened")
                async with session.get(f"http://127.0.0.1:{port}/echo?a=1") as resp:
                    assert resp.status == 200
                    assert b"a=1" in await resp.read()
        finally:
            task.cancel()

"""``python -m queue_proxy`` as a real process: readiness, 50 MB each way in bounded memory,
and a SIGTERM drain with requests in flight and arriving (zero lost)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.dataplane_fixtures import run_app, upstream_app

pytestmark = pytest.mark.e2e
SIZE = 50 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                async with session.get(url, headers={"K-Network-Probe": "queue"}) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)  # polling with a deadline


async def test_process_streams_big_bodies_and_drains_on_sigterm() -> None:
    async with run_app(upstream_app()) as (_, user_port):
        ports = {name: free_port() for name in ("serving", "admin", "metrics")}
        env = {
            **os.environ,
            "USER_PORT": str(user_port),
            "QUEUE_SERVING_PORT": str(ports["serving"]),
            "ADMIN_PORT": str(ports["admin"]),
            "METRICS_PORT": str(ports["metrics"]),
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "CONTAINER_CONCURRENCY": "10",
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.5",
            "SERVING_POD": "proc-pod",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "queue_proxy", env=env, stderr=asyncio.subprocess.PIPE
        )
        url = f"http://127.0.0.1:{ports['serving']}"
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, url)
                before = peak_rss_kib(proc.pid)

                async def upload() -> AsyncIterator[bytes]:
                    block = b"u" * 65536
                    for _ in range(SIZE // 65536):
                        yield block

                async with session.post(url + "/count", data=upload()) as resp:
                    assert int(await resp.text()) == SIZE
                got = 0
                async with session.get(url + f"/big?size={SIZE}") as resp:
                    async for chunk in resp.content.iter_any():
                        got += len(chunk)
                assert got == SIZE
                grown_mib = (peak_rss_kib(proc.pid) - before) / 1024
                assert grown_mib < 16, f"peak RSS grew {grown_mib:.1f} MiB for 50 MiB bodies"

                async def call(path: str) -> int:
                    async with session.get(url + path) as resp:
                        await resp.read()
                        return resp.status

                in_flight = [asyncio.create_task(call("/sleep?s=0.8")) for _ in range(5)]
                async with session.get(f"http://127.0.0.1:{ports['metrics']}/metrics") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.1)  # let the slow requests reach the model server
                proc.send_signal(signal.SIGTERM)
                await wait_unready(session, url)
                arriving = []
                for _ in range(6):  # arriving during the quiet period, each restarting it
                    arriving.append(await call("/echo"))
                    await asyncio.sleep(0.1)
                assert arriving == [200] * 6
                assert await asyncio.gather(*in_flight) == [200] * 5
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stderr is not None
            err = await proc.stderr.read()
        assert b'"msg": "drained"' in err


async def wait_unready(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(5):
        while True:
            async with session.get(url, headers={"K-Network-Probe": "queue"}) as resp:
                if resp.status == 503:
                    return
            await asyncio.sleep(0.02)  # polling with a deadline


def test_process_exits_non_zero_on_bad_environment() -> None:
    import subprocess

    env = {**os.environ, "USER_PORT": "8080", "CONTAINER_CONCURRENCY": "many"}
    out = subprocess.run(
        [sys.executable, "-m", "queue_proxy"], env=env, capture_output=True, timeout=30
    )
    assert out.returncode == 2
    assert b"CONTAINER_CONCURRENCY = 'many': must be an integer" in out.stderr

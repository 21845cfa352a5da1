"""The queue-proxy's start path: the start-phase probe schedule, the ``QUEUE_READY_FD`` line, and
its admin and metrics ports on the forwarding core (no aiohttp to import)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import aiohttp
import pytest

from queue_proxy.app import QueueProxy
from queue_proxy.config import ConfigError, Settings
from queue_proxy.probe import AGGRESSIVE_PERIOD_S, START_PERIOD_S, unready_delay
from tests.dataplane_fixtures import poll_until, run_app, upstream_app


@pytest.mark.parametrize(
    ("since_start_s", "delay_s"),
    [
        pytest.param(0.0, START_PERIOD_S, id="at-start-5ms"),
        pytest.param(1.999, START_PERIOD_S, id="end-of-start-phase-5ms"),
        pytest.param(2.0, AGGRESSIVE_PERIOD_S, id="after-start-phase-knative-50ms"),
        pytest.param(600.0, AGGRESSIVE_PERIOD_S, id="slow-model-50ms"),
    ],
)
def test_unready_probe_delay(since_start_s: float, delay_s: float) -> None:
    assert unready_delay(since_start_s) == delay_s


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        pytest.param(None, None, id="unset"),
        pytest.param("", None, id="empty"),
        pytest.param("7", 7, id="fd-7"),
    ],
)
def test_ready_fd_setting(raw: str | None, want: int | None) -> None:
    env = {"USER_PORT": "8080"} | ({} if raw is None else {"QUEUE_READY_FD": raw})
    assert Settings.from_env(env).ready_fd == want


def test_ready_fd_must_be_a_number() -> None:
    with pytest.raises(ConfigError, match="QUEUE_READY_FD = '-1': must be >= 0"):
        Settings.from_env({"USER_PORT": "8080", "QUEUE_READY_FD": "-1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
async def test_process_writes_one_ready_line_then_closes_the_fd() -> None:
    async with run_app(upstream_app()) as (_, user_port):
        read_fd, write_fd = os.pipe()
        serving = free_port()
        env = {
            **os.environ,
            "USER_PORT": str(user_port),
            "QUEUE_SERVING_PORT": str(serving),
            "ADMIN_PORT": str(free_port()),
            "METRICS_PORT": str(free_port()),
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0",
            "QUEUE_READY_FD": str(write_fd),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "queue_proxy",
            env=env,
            pass_fds=(write_fd,),
            stderr=asyncio.subprocess.DEVNULL,
        )
        os.close(write_fd)
        try:
            # The queue-proxy is now the only writer: EOF comes when it closes its end.
            data = await asyncio.wait_for(asyncio.to_thread(_read_all, read_fd), 30)
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"http://127.0.0.1:{serving}/", headers={"K-Network-Probe": "queue"}
                ) as resp,
            ):
                assert resp.status == 200  # it closed the fd and serves on
            assert [json.loads(line) for line in data.splitlines()] == [
                {"event": "ready", "pid": proc.pid}
            ]
        finally:
            os.close(read_fd)
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_the_queue_proxy_does_not_import_aiohttp() -> None:
    # aiohttp was half of the queue-proxy's import time (a new process's start-to-ready).
    code = "import sys, queue_proxy.app; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    assert out.stdout.decode().strip() == "[]"


async def test_admin_and_metrics_ports() -> None:
    settings = Settings(
        user_port=free_port(),
        serving_port=0,
        admin_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        drain_quiet_period_s=0.05,
        pod="admin-pod",
    )
    qp = QueueProxy(settings, nvml=None, stats_interval_s=None)
    await qp.start()
    run = asyncio.create_task(qp.run())
    admin = f"http://127.0.0.1:{qp.admin_port}"
    metrics = f"http://127.0.0.1:{qp.metrics_port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(metrics + "/stats?x=1") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/json"
                assert (await resp.json())["pod_name"] == "admin-pod"
            async with session.head(metrics + "/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
            async with session.get(metrics + "/metrics") as resp:
                assert "queue_proxy_refusals_total" in await resp.text()
            async with session.get(metrics + "/nope") as resp:
                assert (resp.status, await resp.text()) == (404, "404: Not Found")
            async with session.post(admin + "/wait-for-drain") as resp:
                assert resp.status == 405
                assert resp.headers["Allow"] == "GET,HEAD"
            assert not qp.drainer.draining
            async with session.get(admin + "/wait-for-drain") as resp:  # the preStop hook
                assert (resp.status, await resp.text()) == (200, "drained\n")
            assert qp.drainer.draining
            # No SIGTERM follows (a liveness restart of the model server only): after a second
            # the drain is reset and the queue-proxy is ready again.
            await asyncio.sleep(0.5)
            assert qp.drainer.draining
            await poll_until(lambda: not qp.drainer.draining, 3.0)
            async with session.get(admin + "/wait-for-drain") as resp:  # drains again
                assert (resp.status, await resp.text()) == (200, "drained\n")
            qp.request_shutdown()  # this time SIGTERM follows: no reset
            await asyncio.sleep(1.2)
            assert qp.drainer.draining
    finally:
        qp.request_shutdown()
        await asyncio.wait_for(run, 20)


async def test_a_reset_ends_a_drain_in_progress() -> None:
    from queue_proxy.drain import Drainer

    drainer = Drainer(quiet_period_s=30.0)
    waiting = asyncio.create_task(drainer.drain())
    await asyncio.sleep(0.05)
    assert drainer.draining
    assert not waiting.done()
    drainer.reset()
    await asyncio.wait_for(waiting, 1.0)  # returns, not cancelled
    assert not drainer.draining
    drainer.touch()
    second = asyncio.create_task(drainer.drain())  # a new drain waits its full quiet period
    await asyncio.sleep(0.05)
    assert drainer.draining
    assert not second.done()
    second.cancel()  # the caller's cancellation reaches the caller only
    with pytest.raises(asyncio.CancelledError):
        await second
    assert drainer.draining

"""The zygote (cluster/local/zygote*.py) as real processes: children forked with their own
environment, session and process group, signalled through the zygote, reaped and reported, dying
with it; a dead zygote is replaced on the next fork; the queue-proxy forked from it says ready."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from cluster.local.zygote import ForkedChild, Zygote
from tests.dataplane_fixtures import run_app, upstream_app
from tests.e2e_support import wait_for
from tests.zygote_support import alive, children_of, comm, proc_stat

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ENTRY = "tests.zygote_support:report_and_wait"


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll with a deadline (tests/e2e_support.py), never a bare sleep."""
    await wait_for(predicate, within=within, interval=0.02, what=what)


def read_info(path: Path) -> dict[str, object]:
    return dict(json.loads(path.read_text()))


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    z = Zygote(ENTRY, quiet=True)
    try:
        yield z
    finally:
        await z.close()


async def fork_reporter(
    z: Zygote, out: Path, value: str, name: str = "child"
) -> tuple[ForkedChild, dict[str, object]]:
    child = await z.fork(
        {"ZYGOTE_TEST_OUT": str(out), "ZYGOTE_TEST_VALUE": value},
        name=name,
        notify_env="READY_FD",
    )
    async with asyncio.timeout(20):
        await child.ready.wait()
    return child, read_info(out)


async def test_children_get_their_env_own_group_and_are_signalled(
    zygote: Zygote, tmp_path: Path
) -> None:
    a, info_a = await fork_reporter(zygote, tmp_path / "a.json", "a", name="replica-a-1")
    b, info_b = await fork_reporter(zygote, tmp_path / "b.json", "b")
    assert zygote.pid is not None
    for child, info, value in ((a, info_a, "a"), (b, info_b, "b")):
        assert info["pid"] == child.pid
        assert info["ppid"] == zygote.pid  # forked by the zygote, not spawned by us
        assert info["pgid"] == child.pid
        assert info["sid"] == child.pid
        assert info["value"] == value  # its own environment
        assert info["argv"] == []
        assert info["stdin_is_devnull"] is True
        assert child.returncode is None
    assert comm(a.pid) == "replica-a-1"
    assert proc_stat(zygote.pid)["pgid"] == zygote.pid  # the zygote has its own group too

    a.signal_group(signal.SIGTERM)
    assert await asyncio.wait_for(a.wait(), 20) == -signal.SIGTERM
    assert a.returncode == -signal.SIGTERM
    a.signal_group(signal.SIGKILL)  # after its exit: ignored, nothing else is hit
    assert b.returncode is None
    assert alive(b.pid)

    zygote_pid = zygote.pid
    await zygote.close()  # kills what is left, then exits
    assert not alive(b.pid)
    assert not alive(zygote_pid)
    assert await asyncio.wait_for(b.wait(), 5) < 0


async def test_exit_codes_are_reported(tmp_path: Path) -> None:
    z = Zygote("tests.zygote_support:exit_with", quiet=True)
    try:
        codes = []
        for code in ("0", "3", "70"):
            child = await z.fork({"EXIT_CODE": code})
            codes.append(await asyncio.wait_for(child.wait(), 20))
        assert codes == [0, 3, 70]
    finally:
        await z.close()


async def test_a_dead_zygote_takes_its_children_and_is_replaced(
    zygote: Zygote, tmp_path: Path
) -> None:
    child, _ = await fork_reporter(zygote, tmp_path / "a.json", "a")
    first = zygote.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    # Its child dies with it (PR_SET_PDEATHSIG) and is reported exited.
    assert await asyncio.wait_for(child.wait(), 20) == -signal.SIGKILL
    await until(lambda: not alive(child.pid), "the child gone")
    await until(lambda: zygote.pid is None, "the zygote seen gone")
    again, info = await fork_reporter(zygote, tmp_path / "b.json", "b")
    assert zygote.starts == 2
    assert zygote.pid not in (None, first)
    assert info["ppid"] == zygote.pid
    assert again.returncode is None


async def test_a_bad_entry_point_fails_the_fork() -> None:
    z = Zygote("tests.zygote_support:no_such_function", quiet=True)
    try:
        with pytest.raises(OSError, match="zygote exited with code 2"):
            await z.fork({})
    finally:
        await z.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_forked_queue_proxy_says_ready_serves_and_drains() -> None:
    z = Zygote("queue_proxy.app:main", quiet=True)
    try:
        async with run_app(upstream_app()) as (_, user_port):
            serving, metrics = free_port(), free_port()
            env = {
                "USER_PORT": str(user_port),
                "QUEUE_SERVING_PORT": str(serving),
                "ADMIN_PORT": str(free_port()),
                "METRICS_PORT": str(metrics),
                "QUEUE_BIND_ADDRESS": "127.0.0.1",
                "SERVING_POD": "forked-pod-1",
                "SERVING_REVISION": "forked-v1",
                "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.2",
            }
            qp = await z.fork(env, name="forked-pod-1", notify_env="QUEUE_READY_FD")
            async with asyncio.timeout(20):
                await qp.ready.wait()  # the queue-proxy's own "ready" line, not a probe
            assert proc_stat(qp.pid)["ppid"] == z.pid
            assert children_of(qp.pid) == []
            async with aiohttp.ClientSession() as session:
                probe = {"K-Network-Probe": "queue"}
                async with session.get(f"http://127.0.0.1:{serving}/", headers=probe) as resp:
                    assert (resp.status, await resp.text()) == (200, "queue")
                async with session.get(f"http://127.0.0.1:{serving}/echo") as resp:
                    assert resp.status == 200
                stats = f"http://127.0.0.1:{metrics}/stats"
                async with session.get(stats) as resp:
                    assert (await resp.json())["pod_name"] == "forked-pod-1"
            qp.signal_group(signal.SIGTERM)
            assert await asyncio.wait_for(qp.wait(), 20) == 0  # drained, clean exit
    finally:
        await z.close()

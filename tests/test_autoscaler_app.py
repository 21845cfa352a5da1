"""``python -m autoscaler`` as a real process: serves both ports, logs JSON, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from metrics.stat import Stat, WireStat, encode_batch

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_main_serves_status_and_stats_and_stops_on_sigterm() -> None:
    stat_port, status_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "autoscaler",
        "--spec",
        str(ROOT / "examples" / "iris.yaml"),
        "--host",
        "127.0.0.1",
        "--stat-port",
        str(stat_port),
        "--status-port",
        str(status_port),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        body: dict[str, list[dict[str, object]]] = {}
        async with aiohttp.ClientSession() as session:
            while not body:
                assert loop.time() < deadline, "autoscaler did not come up"
                try:
                    async with session.get(f"http://127.0.0.1:{status_port}/v1/revisions") as r:
                        body = await r.json()
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)  # polling with a deadline for the process to bind
            assert body["revisions"], body
            row = body["revisions"][0]
            async with session.ws_connect(f"http://127.0.0.1:{stat_port}/") as ws:
                stat = Stat(pod_name="act", average_concurrent_requests=1, request_count=1)
                await ws.send_str(
                    encode_batch(
                        [
                            WireStat(
                                namespace=str(row["namespace"]),
                                revision=str(row["revision"]),
                                stat=stat,
                            )
                        ]
                    )
                )
                proc.send_signal(signal.SIGTERM)
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert msg.data == aiohttp.WSCloseCode.SERVICE_RESTART
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        lines = (await proc.stderr.read()).decode().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        serving = [r for r in records if r["msg"] == "autoscaler serving"]
        assert serving
        assert serving[0]["logger"] == "zeroserve.autoscaler"
        assert serving[0]["stat_port"] == stat_port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

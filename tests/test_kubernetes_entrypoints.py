"""``python -m activator --kubernetes`` and ``python -m autoscaler --kubernetes`` as real processes,
configured by a kubeconfig that points at the in-repo API server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cluster.kubernetes.api import CONFIGMAPS, DEPLOYMENTS, ENDPOINTSLICES, PODS
from tests.k8s.fakeapi import FakeApiServer

NS = "zeroserve-system"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval_s=0.2)
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
def kubeconfig(server: FakeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "test"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))
    return path


@contextlib.asynccontextmanager
async def process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYSTEM_NAMESPACE=NS)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=ROOT, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def poll(check: object, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        assert callable(check)
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def revision(name: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "serving.knative.dev/service": "iris",
                "serving.knative.dev/revision": name,
            },
            "annotations": {"serving.knative.dev/container-concurrency": "2"},
        },
        "spec": {"replicas": 1, "template": {"spec": {"containers": []}}},
    }


async def test_activator_routes_through_pods_from_endpoint_slices(
    server: FakeApiServer, kubeconfig: Path
) -> None:
    # A stand-in queue-proxy: answers the activator's probe, and requests.
    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("K-Network-Probe") == "queue":
            return web.Response(text="queue")
        return web.Response(text=f"served {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    qp_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", qp_port).start()

    await server.put("deployments", revision("iris-1"))
    await server.put(
        "endpointslices",
        {
            "metadata": {"name": "iris-1-x", "labels": {"serving.knative.dev/revision": "iris-1"}},
            "ports": [{"name": "http", "port": qp_port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        },
    )
    port, metrics = free_port(), free_port()
    try:
        async with (
            process(
                "-m",
                "activator",
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics),
                "--pod-ip",
                "127.0.0.1",
                "--drain-quiet-period",
                "0",
            ) as proc,
            aiohttp.ClientSession() as http,
        ):

            async def answered() -> bool:
                try:
                    async with http.get(
                        f"http://127.0.0.1:{port}/v2/models/iris/infer",
                        headers={"Host": "iris.default.example.com"},
                    ) as resp:
                        return (
                            resp.status == 200
                            and await resp.text() == "served /v2/models/iris/infer"
                        )
                except aiohttp.ClientConnectionError:
                    return False

            await poll(answered)
            assert proc.returncode is None
        assert proc.returncode == 0
    finally:
        await runner.cleanup()
    # It only read: list and watch, never a write.
    assert {m for m, _ in server.requests} == {"GET"}
    assert any(DEPLOYMENTS.path(None) in p for _, p in server.requests)
    assert any(ENDPOINTSLICES.path(NS) in p for _, p in server.requests)


async def test_autoscaler_takes_the_lease_and_releases_it(
    server: FakeApiServer, kubeconfig: Path
) -> None:
    await server.put("deployments", revision("iris-1"))
    await server.put(
        "configmaps",
        {
            "metadata": {"name": "config-autoscaler", "namespace": NS},
            "data": {"stable-window": "60s"},
        },
    )
    await server.put("pods", {"metadata": {"name": "autoscaler-a", "namespace": NS}, "spec": {}})
    stat, status = free_port(), free_port()
    async with (
        process(
            "-m",
            "autoscaler",
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--host",
            "127.0.0.1",
            "--stat-port",
            str(stat),
            "--status-port",
            str(status),
            "--pod-name",
            "autoscaler-a",
        ) as proc,
        aiohttp.ClientSession() as http,
    ):

        def holder() -> str:
            lease = server.get("leases", NS, "zeroserve-autoscaler") or {}
            return str(lease.get("spec", {}).get("holderIdentity", ""))

        await poll(lambda: holder() == "autoscaler-a")
        await poll(
            lambda: (
                (server.get("pods", NS, "autoscaler-a") or {})["metadata"].get("labels")
                == {"zeroserve.dev/leader": "true"}
            )
        )

        async def lists_revision() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{status}/v1/revisions") as resp:
                    return "iris-1" in await resp.text()
            except aiohttp.ClientConnectionError:
                return False

        await poll(lists_revision)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert holder() == ""  # released on a clean stop: a standby takes over at once
    assert any(CONFIGMAPS.path(NS) in p and "config-autoscaler" in p for _, p in server.requests)
    assert PODS.plural == "pods"

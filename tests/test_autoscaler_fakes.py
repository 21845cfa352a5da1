"""Scripted queue-proxy stat endpoints on loopback, for the autoscaler's component tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from cluster.ports import PodEndpoint
from metrics.stat import Stat


class FakePod:
    """One pod's ``GET /stats``: answers ``stat``, or ``status``, or hangs while ``hang`` is set."""

    def __init__(self, name: str, *, started_at: float = 0.0) -> None:
        self.name = name
        self.started_at = started_at
        self.stat = Stat(pod_name=name)
        self.status = 200
        self.hang = False
        self.hits = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.address = ""

    def serve(self, conc: float = 0.0, rps: float = 0.0) -> None:
        self.stat = Stat(
            pod_name=self.name,
            average_concurrent_requests=conc,
            request_count=rps,
            process_uptime=1.0,
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.hang:
            await self._release.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="no")
        return web.Response(body=self.stat.to_json(), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/stats", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> PodEndpoint:
        return PodEndpoint(
            name=self.name,
            address=self.address,
            stats_address=self.address,
            started_at=self.started_at,
        )


@asynccontextmanager
async def fake_pods(
    n: int, *, prefix: str = "pod", started_at: float = 0.0
) -> AsyncIterator[list[FakePod]]:
    pods = [FakePod(f"{prefix}-{i}", started_at=started_at) for i in range(n)]
    try:
        for pod in pods:
            await pod.start()
        yield pods
    finally:
        for pod in pods:
            await pod.stop()

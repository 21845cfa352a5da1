"""Autoscaler benchmarks: one multiscaler tick over many revisions, and scraping many pods at 1 Hz.

    .venv/bin/python -m loadtests.bench_autoscaler tick --revisions 10000
    .venv/bin/python -m loadtests.bench_autoscaler scrape --pods 1000 --seconds 20

``tick``: 10,000 revisions with a full minute of history each (60 one-second buckets in all four
windows); times ``MultiScaler.tick()`` (ready pods, two window averages, the decider, the bounds)
with a manual clock advancing 2 s per tick and two new stats per revision between ticks (their
recording is timed separately: it is the scraper's and stat server's cost, not the tick's).

``scrape``: the stat endpoints run in a child process (so their CPU is not counted), 1,000 pods
as 250 revisions × 4 pods (sample size of 4 is 4: every pod is scraped every second); the real
``Autoscaler`` runs its scrape and tick loops on uvloop; the CPU share is this process's CPU
time over wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

import uvloop
from prometheus_client import CollectorRegistry

from autoscaler.collector import Collector
from autoscaler.engine import build_autoscaler
from autoscaler.multiscaler import MultiScaler
from autoscaler.status import AutoscalerMetrics
from cluster.memory import MemoryConfig, MemoryEndpoints, MemoryRevisions, MemoryScaleTarget
from cluster.ports import PodEndpoint
from cluster.spec import Revision, RevisionKey
from metrics.clock import LoopClock, ManualClock
from metrics.stat import Stat


def _revisions(n: int) -> dict[RevisionKey, Revision]:
    revs = [
        Revision(namespace="bench", service=f"svc-{i}", name=f"rev-{i}", container_concurrency=10)
        for i in range(n)
    ]
    return {r.key: r for r in revs}


async def bench_tick(n: int, ticks: int) -> None:
    clock = ManualClock(1_700_000_000.0)
    collector = Collector()
    target = MemoryScaleTarget()
    revisions = _revisions(n)
    for i, key in enumerate(revisions):
        target.ready[key] = 1 + i % 5
    ms = MultiScaler(
        collector=collector, scale_target=target, clock=clock, metrics=AutoscalerMetrics()
    )
    await ms.sync_revisions(revisions)
    stats = [Stat(pod_name="s", average_concurrent_requests=float(i % 40)) for i in range(n)]
    keys = list(revisions)
    for _ in range(60):
        clock.advance(1.0)
        now = clock.wall()
        for key, stat in zip(keys, stats, strict=True):
            collector.record(key, stat, now)
    tick_times: list[float] = []
    record_times: list[float] = []
    for _ in range(ticks):
        start = time.perf_counter()
        for _ in range(2):
            clock.advance(1.0)
            now = clock.wall()
            for key, stat in zip(keys, stats, strict=True):
                collector.record(key, stat, now)
        record_times.append((time.perf_counter() - start) / 2)
        start = time.perf_counter()
        await ms.tick()
        tick_times.append(time.perf_counter() - start)
    tick_times.sort()
    print(f"revisions: {n}, ticks: {ticks}")
    print(
        f"tick: median {statistics.median(tick_times) * 1e3:.1f} ms, "
        f"p90 {tick_times[int(len(tick_times) * 0.9)] * 1e3:.1f} ms, "
        f"max {tick_times[-1] * 1e3:.1f} ms"
    )
    print(f"recording one stat per revision: median {statistics.median(record_times) * 1e3:.1f} ms")
    print(f"scale changes: {len(target.calls)}")


_SERVER = """
import asyncio, json, sys, uvloop
from aiohttp import web
body = json.dumps({"pod_name": "p", "average_concurrent_requests": 3.0, "request_count": 3.0,
                   "process_uptime": 100.0}).encode()
async def stats(request):
    return web.Response(body=body, content_type="application/json")
async def main(n):
    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for _ in range(n):
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
    print(" ".join(str(a[1]) for a in runner.addresses), flush=True)
    await asyncio.Event().wait()
uvloop.run(main(int(sys.argv[1])))
"""


async def bench_scrape(pods: int, per_revision: int, seconds: float, ports: int) -> None:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, str(ports), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = (await server.stdout.readline()).decode()
        addresses = [f"127.0.0.1:{p}" for p in line.split()]
        n_revisions = pods // per_revision
        revisions = _revisions(n_revisions)
        endpoints = MemoryEndpoints()
        target = MemoryScaleTarget()
        i = 0
        for key in revisions:
            pod_list = []
            for j in range(per_revision):
                addr = addresses[i % len(addresses)]
                pod_list.append(
                    PodEndpoint(name=f"{key.name}-{j}", address=addr, stats_address=addr)
                )
                i += 1
            endpoints.set_endpoints(key, pod_list)
            target.ready[key] = per_revision
        autoscaler = build_autoscaler(
            MemoryRevisions(revisions), endpoints, target, MemoryConfig(), LoopClock()
        )
        await autoscaler.start()
        try:
            await asyncio.sleep(3.0)  # warm up: connections pooled
            errors_before = _scrape_errors(autoscaler.metrics.registry)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            errors = _scrape_errors(autoscaler.metrics.registry) - errors_before
            count = autoscaler.metrics.registry.get_sample_value(
                "autoscaler_scrape_duration_seconds_count"
            )
            total = autoscaler.metrics.registry.get_sample_value(
                "autoscaler_scrape_duration_seconds_sum"
            )
        finally:
            await autoscaler.close()
        print(f"pods: {pods} ({n_revisions} revisions × {per_revision}), {seconds:.0f} s")
        print(f"CPU share of one core: {cpu / wall * 100:.1f} %")
        print(f"scrape errors: {errors:.0f}")
        if count and total is not None:
            print(f"revision scrapes: {count:.0f}, mean duration {total / count * 1e3:.2f} ms")
    finally:
        server.terminate()
        await server.wait()


def _scrape_errors(registry: CollectorRegistry) -> float:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "autoscaler_scrape_errors":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tick = sub.add_parser("tick")
    tick.add_argument("--revisions", type=int, default=10_000)
    tick.add_argument("--ticks", type=int, default=20)
    scrape = sub.add_parser("scrape")
    scrape.add_argument("--pods", type=int, default=1000)
    scrape.add_argument("--per-revision", type=int, default=4)
    scrape.add_argument("--seconds", type=float, default=20.0)
    scrape.add_argument("--server-ports", type=int, default=50)
    args = parser.parse_args(argv)
    if args.what == "tick":
        uvloop.run(bench_tick(args.revisions, args.ticks))
    else:
        uvloop.run(bench_scrape(args.pods, args.per_revision, args.seconds, args.server_ports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

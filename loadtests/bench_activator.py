"""Activator hop benchmark: capacity, added latency and CPU against a direct call and nginx.

    .venv/bin/python -m loadtests.bench_activator run --seconds 10 [--rate 1000 --slice 2 --pin]
    .venv/bin/python -O -m loadtests.bench_activator memory --revisions 1000

``run`` starts, each in its own process: a fast upstream (raw uvloop protocol, answers every
request with 200 ``queue``, so it passes the activator's probe too), nginx 1 worker proxying to
it with keep-alive (``loadtests/nginx/proxy.conf``), the activator (``build_activator`` with one
CC=0 revision on that upstream) and, for the full path (unless ``--no-full-path``), a
queue-proxy in front of the upstream with another activator in front of it. Then, with
:mod:`loadtests.harness`, in turns of ``--slice`` seconds (direct, nginx, activator, full path,
direct, …) until each target has had ``--seconds`` of each: capacity with ``wrk -t1 -c64``;
latency at ``--rate`` requests/s with an open-loop client (32 keep-alive connections, each
request timed from its scheduled send); CPU of the proxy process(es) per request under both
(nginx's worker; the activator; activator + queue-proxy for the full path). Every request
carries ``Host: bench.default.example.com``. The cores are shared, so compare the columns of
one run; ``--pin`` puts the proxies on CPU 0, the upstream and the load generators on CPU 1.

``memory``: one activator process-local with ``--revisions`` services (one revision and one
pod each), one request to each (a throttler, a reporter entry, metrics counts), RSS before
and after.

Knative's own activator is not a peer here, as its queue-proxy is in ``bench_hop --knative``: it
does not run alone in front of one upstream. It learns revisions, their endpoints and
containerConcurrency only from the Kubernetes API (informers) and reports to the autoscaler over a
websocket, so it needs a cluster (an API server with Knative's CRDs at least) to serve a request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from typing import cast

import uvloop

from loadtests import harness
from loadtests.harness import Target

HOST = "bench.default.example.com"
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nqueue"


# --- the fast upstream ---------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")  # GETs without a body: one head, one response
        if n and self.transport is not None:
            self.transport.write(_RESPONSE * n)
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4 :]


async def _serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the activator under test ---------------------------------------------------------------


async def serve_activator(port: int, primary: str, shadow: str = "") -> None:
    """An activator in this process on ``port``: service ``bench``, all of it to revision
    ``bench-1`` at ``primary``; with ``shadow``, revision ``bench-2`` there gets a copy of
    every request (bench_shadow)."""
    from activator.app import ActivatorSettings, build_activator
    from activator.sinks import InProcessStatSink
    from cluster.memory import MemoryEndpoints, MemoryRoutes
    from cluster.ports import PodEndpoint
    from cluster.spec import Revision, RevisionKey, Service, ShadowTarget, TrafficTarget

    pods = {"bench-1": primary, **({"bench-2": shadow} if shadow else {})}
    svc = Service(
        namespace="default",
        name="bench",
        revisions=tuple(
            Revision(namespace="default", service="bench", name=n, container_concurrency=0)
            for n in pods
        ),
        traffic=(TrafficTarget(revision="bench-1", percent=100),),
        shadows=(ShadowTarget(revision="bench-2", percent=100),) if shadow else (),
    )
    endpoints = MemoryEndpoints()
    for name, address in pods.items():
        endpoints.set_endpoints(
            RevisionKey("default", name),
            [PodEndpoint(name=name, address=address, stats_address="")],
        )
    act = build_activator(
        MemoryRoutes([svc]),
        endpoints,
        InProcessStatSink(lambda _batch: None),
        settings=ActivatorSettings(pod_name="bench-activator"),
    )
    await act.start("127.0.0.1", port)
    await asyncio.Event().wait()


def run(args: argparse.Namespace) -> int:
    proxy_cpus, load_cpus = harness.pinning(args.pin)
    me = [sys.executable, "-O", "-m", "loadtests.bench_activator"]
    up, ngx, act, qp, act_qp = (harness.free_port() for _ in range(5))
    with harness.processes() as ps:
        ps.spawn([*me, "upstream", "--port", str(up)], cpus=load_cpus)
        harness.wait_port(up)
        nginx = ps.nginx("proxy", proxy_cpus, port=ngx, upstream_port=up)
        act_proc = ps.spawn(
            [*me, "activator", "--port", str(act), "--upstream", f"127.0.0.1:{up}"],
            cpus=proxy_cpus,
        )
        full_path = not args.no_full_path
        if full_path:
            qp_proc = ps.queue_proxy(
                up,
                qp,
                proxy_cpus,
                SERVING_NAMESPACE="default",
                SERVING_SERVICE="bench",
                SERVING_REVISION="bench-1",
                SERVING_POD="bench-1-pod",
            )
            act_qp_proc = ps.spawn(
                [*me, "activator", "--port", str(act_qp), "--upstream", f"127.0.0.1:{qp}"],
                cpus=proxy_cpus,
            )
        harness.wait_ok(ngx)
        harness.wait_ok(act, HOST)
        targets = [
            Target("direct", up, [], HOST),
            Target("nginx", ngx, [harness.worker_pid(nginx)], HOST),
            Target("activator", act, [act_proc.pid], HOST),
        ]
        if full_path:
            try:
                harness.wait_ok(act_qp, HOST, 15)
                pids = [act_qp_proc.pid, qp_proc.pid]
                targets.append(Target("activator → queue-proxy", act_qp, pids, HOST))
            except RuntimeError as exc:
                print(f"full path left out: {exc}", file=sys.stderr)
        rows = harness.measure_all(targets, args, load_cpus)
    harness.print_table(rows, harness.columns(rows, args.rate))
    harness.print_goals(rows, "activator")
    return 0


# --- memory ----------------------------------------------------------------------------------


async def _memory(revisions: int) -> tuple[float, float, float]:
    from activator.app import ActivatorSettings, build_activator
    from activator.sinks import InProcessStatSink
    from cluster.memory import MemoryEndpoints, MemoryRoutes
    from cluster.ports import PodEndpoint
    from cluster.spec import Revision, Service, TrafficTarget

    up = harness.free_port()
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", up)
    base = harness.rss_mib(os.getpid())
    services = []
    endpoints = MemoryEndpoints()
    for i in range(revisions):
        rev = Revision(
            namespace="default", service=f"m{i}", name=f"m{i}-1", container_concurrency=1
        )
        services.append(
            Service(
                namespace="default",
                name=f"m{i}",
                revisions=(rev,),
                traffic=(TrafficTarget(revision=rev.name, percent=100),),
            )
        )
        endpoints.set_endpoints(
            rev.key, [PodEndpoint(name="p", address=f"127.0.0.1:{up}", stats_address="")]
        )
    act = build_activator(
        MemoryRoutes(services),
        endpoints,
        InProcessStatSink(lambda _b: None),
        settings=ActivatorSettings(),
    )
    await act.start("127.0.0.1", 0)
    deadline = time.monotonic() + 30
    while any(not act.prober.healthy(s.revisions[0].key) for s in services):
        if time.monotonic() > deadline:
            raise RuntimeError("pods not probed healthy in time")
        await asyncio.sleep(0.05)
    known = harness.rss_mib(os.getpid())
    reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
    for i in range(revisions):
        writer.write(f"GET / HTTP/1.1\r\nHost: m{i}.default.example.com\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"revision m{i}: {head!r}")
        await reader.readexactly(5)
    writer.close()
    used = harness.rss_mib(os.getpid())
    await act.close()
    server.close()
    return base, known, used


def memory(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        base, known, used = r.run(_memory(args.revisions))
    n = args.revisions
    print("| revisions | RSS before | known + probed | after one request each | per revision |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {n:,} | {base:.1f} MiB | {known:.1f} MiB | {used:.1f} MiB "
        f"| {(used - base) * 1024 / n:.1f} KiB |"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_activator")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    harness.add_arguments(r)
    r.add_argument("--no-full-path", action="store_true")
    m = sub.add_parser("memory")
    m.add_argument("--revisions", type=int, default=1000)
    u = sub.add_parser("upstream")
    u.add_argument("--port", type=int, required=True)
    a = sub.add_parser("activator")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--upstream", required=True)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "run":
        return run(args)
    if args.cmd == "memory":
        return memory(args)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.cmd == "upstream":
            runner.run(_serve_upstream(args.port))
        else:
            runner.run(serve_activator(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

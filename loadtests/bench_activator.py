"""Activator hop benchmark: capacity and added latency against a direct call and nginx.

    .venv/bin/python -m loadtests.bench_activator run --seconds 10
    .venv/bin/python -O -m loadtests.bench_activator memory --revisions 1000

``run`` starts, each in its own process: a fast upstream (raw uvloop protocol, answers every
request with 200 ``queue``, so it passes the activator's probe too), nginx 1 worker proxying to
it with keep-alive, the activator (``build_activator`` with one CC=0 revision on that upstream)
and, for the full path, a queue-proxy in front of the upstream with the activator in front of
it. Capacity: ``wrk -t1 -c64`` for ``--seconds`` against each target. Latency: an open-loop
client at ``--rate`` requests/s (each request is timed from its scheduled send, so a stall
counts) over 32 keep-alive connections. Each target gets ``--seconds`` of each, in turns of
``--slice`` seconds (direct, nginx, activator, full path, direct, …), so load from elsewhere on
the machine falls on every column alike. CPU: user+system time of the proxy process(es) (nginx's
worker; the activator; activator + queue-proxy for the full path) per request, under wrk and at
the fixed rate. Everything shares the machine's cores, so the numbers are relative: compare the
columns of one run. ``--pin`` puts the proxies on CPU 0 and the upstream and load generators on
CPU 1 (each proxy then has a core to itself, as nginx's one worker), for steadier numbers.

``memory``: one activator process-local with ``--revisions`` services (one revision and one
pod each), one request to each (a throttler, a reporter entry, metrics counts), RSS before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import uvloop

from loadtests.bench_hop import cpu_seconds, worker_pid

HOST = "bench.default.example.com"
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nqueue"


_BAD: list[bytes] = []  # the first non-200 responses, printed with the errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def _serve_activator(port: int, upstream: str) -> None:
    from activator.app import ActivatorSettings, build_activator
    from activator.sinks import InProcessStatSink
    from cluster.memory import MemoryEndpoints, MemoryRoutes
    from cluster.ports import PodEndpoint
    from cluster.spec import Revision, RevisionKey, Service, TrafficTarget

    rev = Revision(namespace="default", service="bench", name="bench-1", container_concurrency=0)
    svc = Service(
        namespace="default",
        name="bench",
        revisions=(rev,),
        traffic=(TrafficTarget(revision="bench-1", percent=100),),
    )
    endpoints = MemoryEndpoints()
    endpoints.set_endpoints(
        RevisionKey("default", "bench-1"),
        [PodEndpoint(name="p", address=upstream, stats_address="")],
    )
    act = build_activator(
        MemoryRoutes([svc]),
        endpoints,
        InProcessStatSink(lambda _batch: None),
        settings=ActivatorSettings(pod_name="bench-activator"),
    )
    await act.start("127.0.0.1", port)
    await asyncio.Event().wait()


# --- the open-loop client --------------------------------------------------------------------


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: list[tuple[float, asyncio.Future[float]]] = []
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        # Responses are small and have Content-Length: count complete ones.
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            m = re.search(rb"(?i)content-length:\s*(\d+)", self.buf[:head_end])
            length = int(m.group(1)) if m else 0
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            status_ok = self.buf.startswith(b"HTTP/1.1 200")
            if not status_ok and len(_BAD) < 3:
                _BAD.append(self.buf[:end])
            self.buf = self.buf[end:]
            sched, fut = self.pending.pop(0)
            if not fut.done():
                # (a sleep may wake a hair before perf_counter's schedule: clamp at 0)
                fut.set_result(max(0.0, time.perf_counter() - sched) if status_ok else -1.0)


async def open_loop(port: int, rate: float, seconds: float, conns: int = 32) -> list[float]:
    """Latencies (s) of requests sent at ``rate``/s, each timed from its scheduled send."""
    loop = asyncio.get_running_loop()
    clients: list[_Client] = []
    for _ in range(conns):
        _, proto = await loop.create_connection(_Client, "127.0.0.1", port)
        clients.append(proto)
    req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    futs: list[asyncio.Future[float]] = []
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        sched = start + i / rate
        delay = sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # the least-loaded connection (open loop: never wait for a response to send)
        c = min(clients, key=lambda c: len(c.pending))
        fut = loop.create_future()
        c.pending.append((sched, fut))
        assert c.transport is not None
        c.transport.write(req)
        futs.append(fut)
    results = await asyncio.wait_for(asyncio.gather(*futs), 30)
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    return list(results)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- processes -------------------------------------------------------------------------------


def _spawn(
    args: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)  # nginx's worker inherits it at fork
    return proc


def _wait_port(port: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _wait_ok(port: int, within_s: float = 10.0) -> None:
    """Until a routed GET answers 200 (the activator has probed its pod)."""
    deadline = time.monotonic() + within_s
    req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(req)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} does not answer 200")


_NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 10000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def wrk(port: int, seconds: float, conns: int = 64) -> tuple[float, int]:
    """Requests/s and requests done, with ``wrk -t1 -c<conns>``."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if m is None or n is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1)), int(n.group(1))


def _cpu_s(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


@dataclasses.dataclass
class Row:
    name: str
    capacity: float  # requests/s
    p50: float  # seconds, at the fixed rate
    p99: float
    p999: float
    cpu_us_capacity: float  # CPU µs of the proxy process(es) per request, under wrk
    cpu_us_rate: float  # the same at the fixed rate


@dataclasses.dataclass
class _Target:
    """One target's measurements, summed over its slices."""

    name: str
    port: int
    pids: list[int]
    requests: int = 0  # done under wrk
    wrk_s: float = 0.0
    cpu_wrk_s: float = 0.0
    cpu_rate_s: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)

    def wrk_slice(self, seconds: float) -> None:
        c0 = _cpu_s(self.pids)
        rps, done = wrk(self.port, seconds)
        self.cpu_wrk_s += _cpu_s(self.pids) - c0
        self.requests += done
        self.wrk_s += done / rps

    def rate_slice(self, rate: float, seconds: float) -> None:
        c0 = _cpu_s(self.pids)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            lat = r.run(open_loop(self.port, rate, seconds))
        self.cpu_rate_s += _cpu_s(self.pids) - c0
        errors = sum(1 for v in lat if v < 0)
        if errors:
            print(f"{self.name}: {errors} non-200 responses, e.g. {_BAD}", file=sys.stderr)
            _BAD.clear()
        self.latencies += lat

    def row(self) -> Row:
        ok = [v for v in self.latencies if v >= 0]
        n = max(len(self.latencies), 1)
        return Row(
            self.name,
            self.requests / max(self.wrk_s, 1e-9),
            statistics.median(ok),
            pct(ok, 99),
            pct(ok, 99.9),
            self.cpu_wrk_s / max(self.requests, 1) * 1e6 if self.pids else 0.0,
            self.cpu_rate_s / n * 1e6 if self.pids else 0.0,
        )


def _measure_all(targets: list[_Target], args: argparse.Namespace) -> list[Row]:
    """Each target gets ``--seconds`` under wrk and ``--seconds`` at the rate, in slices of
    ``--slice`` seconds taken in turn (direct, nginx, activator, …, direct, …): load from
    elsewhere on the machine then falls on every column alike, not on whichever ran last."""
    for t in targets:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(open_loop(t.port, args.rate, 1.0))  # warm-up (connections, probes)
    slices = max(1, round(args.seconds / args.slice))
    each = args.seconds / slices
    for i in range(slices):
        print(f"slice {i + 1}/{slices}", file=sys.stderr)
        for t in targets:
            t.wrk_slice(each)
        for t in targets:
            t.rate_slice(args.rate, each)
    return [t.row() for t in targets]


def run(args: argparse.Namespace) -> int:
    py = sys.executable
    # --pin: the proxies under test share CPU 0; the upstream and the load generators get CPU 1
    # (each proxy then has a core to itself, as a one-worker nginx, and the CPU numbers hold).
    proxy_cpus: set[int] = {0} if args.pin else set()
    load_cpus: set[int] = {1} if args.pin else set()
    me = [py, "-O", "-m", "loadtests.bench_activator"]
    up, ngx, act, qp, act_qp = (free_port() for _ in range(5))
    with processes() as procs, tempfile.TemporaryDirectory() as tmp:
        procs.append(_spawn([*me, "upstream", "--port", str(up)], cpus=load_cpus))
        _wait_port(up)
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=tmp, upstream=up, port=ngx))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx_proc = _spawn([nginx, "-c", str(conf), "-p", tmp], cpus=proxy_cpus)
        procs.append(nginx_proc)
        act_proc = _spawn(
            [*me, "activator", "--port", str(act), "--upstream", f"127.0.0.1:{up}"],
            cpus=proxy_cpus,
        )
        procs.append(act_proc)
        full_path = not args.no_full_path
        if full_path:
            admin, metrics = free_port(), free_port()
            qp_proc = _spawn(
                [py, "-O", "-m", "queue_proxy"],
                env={
                    "USER_PORT": str(up),
                    "QUEUE_SERVING_PORT": str(qp),
                    "ADMIN_PORT": str(admin),
                    "METRICS_PORT": str(metrics),
                    "SERVING_NAMESPACE": "default",
                    "SERVING_SERVICE": "bench",
                    "SERVING_REVISION": "bench-1",
                    "SERVING_POD": "bench-1-pod",
                    "CONTAINER_CONCURRENCY": "0",
                    "LOG_LEVEL": "warning",
                },
                cpus=proxy_cpus,
            )
            procs.append(qp_proc)
            act_qp_proc = _spawn(
                [*me, "activator", "--port", str(act_qp), "--upstream", f"127.0.0.1:{qp}"],
                cpus=proxy_cpus,
            )
            procs.append(act_qp_proc)
        _wait_port(ngx)
        _wait_ok(act)
        targets = [
            _Target("direct", up, []),
            _Target("nginx", ngx, [worker_pid(nginx_proc)]),
            _Target("activator", act, [act_proc.pid]),
        ]
        if full_path:
            try:
                _wait_ok(act_qp, 15)
                targets.append(
                    _Target("activator → queue-proxy", act_qp, [act_qp_proc.pid, qp_proc.pid])
                )
            except RuntimeError as exc:
                print(f"full path left out: {exc}", file=sys.stderr)
        if load_cpus:
            os.sched_setaffinity(0, load_cpus)  # this process runs the clients
        rows = _measure_all(targets, args)
    direct = rows[0]
    print(
        f"| target | capacity (req/s, wrk -c64) | p50 ms @ {args.rate:g}/s | p99 ms | p99.9 ms "
        "| added p50 ms | added p99 ms | CPU µs/req at capacity | CPU µs/req @ rate |"
    )
    print("|" + " --- |" * 9)
    for r in rows:
        print(
            f"| {r.name} | {r.capacity:,.0f} | {r.p50 * 1000:.2f} | {r.p99 * 1000:.2f} "
            f"| {r.p999 * 1000:.2f} | {(r.p50 - direct.p50) * 1000:.2f} "
            f"| {(r.p99 - direct.p99) * 1000:.2f} | {r.cpu_us_capacity:.0f} | {r.cpu_us_rate:.0f} |"
        )
    by = {r.name: r for r in rows}
    if "nginx" in by and "activator" in by:
        a, n = by["activator"], by["nginx"]
        ratio = a.capacity / n.capacity
        added = (a.p99 - direct.p99) / max(n.p99 - direct.p99, 1e-6)
        print(f"\ncapacity activator/nginx = {ratio:.2f} (goal ≥ 0.3)")
        print(f"added p99 activator/nginx = {added:.2f} (goal ≤ 2)")
    return 0


# --- memory ----------------------------------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _memory(revisions: int) -> tuple[int, int, int]:
    from activator.app import ActivatorSettings, build_activator
    from activator.sinks import InProcessStatSink
    from cluster.memory import MemoryEndpoints, MemoryRoutes
    from cluster.ports import PodEndpoint
    from cluster.spec import Revision, Service, TrafficTarget

    up = free_port()
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", up)
    base = _rss_kib()
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
    known = _rss_kib()
    reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
    for i in range(revisions):
        writer.write(f"GET / HTTP/1.1\r\nHost: m{i}.default.example.com\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"revision m{i}: {head!r}")
        await reader.readexactly(5)
    writer.close()
    used = _rss_kib()
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
        f"| {n:,} | {base / 1024:.1f} MiB | {known / 1024:.1f} MiB | {used / 1024:.1f} MiB "
        f"| {(used - base) / n:.1f} KiB |"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_activator")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--rate", type=float, default=1000.0)
    r.add_argument("--slice", type=float, default=2.0, help="seconds per turn (targets take turns)")
    r.add_argument("--no-full-path", action="store_true")
    r.add_argument(
        "--pin", action="store_true", help="proxies on CPU 0, upstream and load on CPU 1"
    )
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
            runner.run(_serve_activator(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

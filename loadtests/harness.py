"""What the hop benchmarks share: their processes, the load generators, the turns, the table.

A hop benchmark (``bench_hop``: the queue-proxy; ``bench_activator``: the activator) starts an
upstream and proxies in front of it, each in its own process (:func:`processes`), and measures
every target the same way (:func:`measure_all`):

* capacity: ``wrk -t1 -c64`` (:func:`wrk`);
* latency at a fixed rate with an open-loop client (:func:`open_loop`): it sends on schedule
  whatever the answers do and times each request from its *scheduled* send, so a stall counts
  (a closed-loop client would wait, send its next request late, and hide the stall);
* optionally latency with ``hey`` at the same rate (:func:`hey`), as the published numbers were
  first made: its workers start in phase, so it measures bursts of ``-c`` requests;
* CPU: user+system time of the proxy's process(es) per request, under wrk and at the rate;
* RSS of the proxy's process(es), idle and peak.

Targets take turns in slices (direct, nginx, proxy, …, direct, …), so load from elsewhere on
the machine falls on every column alike, not on whichever target ran last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import uvloop

from loadtests import peers

NGINX_DIR = Path(__file__).parent / "nginx"
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): with 10 values p95 is the largest."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_port(port: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wait_ok(port: int, host: str | None = None, within_s: float = 10.0) -> None:
    """Until a GET answers 200 (the proxy is up and has reached its upstream)."""
    deadline = time.monotonic() + within_s
    req = _request(port, host, b"Connection: close\r\n")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(req)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} does not answer 200")


def _request(port: int, host: str | None, extra: bytes = b"") -> bytes:
    return b"GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n" % ((host or f"127.0.0.1:{port}").encode(), extra)


# --- processes -------------------------------------------------------------------------------


def pinning(pin: bool) -> tuple[set[int], set[int]]:
    """The CPUs of the proxies and of the upstream and load generators (none: all of them).

    ``--pin``: the proxies under test share CPU 0, the upstream and the load generators get
    CPU 1; each proxy then has a core to itself while it is measured, as a one-worker nginx,
    and the CPU numbers hold."""
    return ({0}, {1}) if pin else (set(), set())


class Processes:
    """The processes of one benchmark run (see :func:`processes`)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()  # pids stopped with SIGKILL, not SIGTERM

    def spawn(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        *,
        cwd: Path | None = None,
        clean_env: bool = False,
        kill: bool = False,
    ) -> subprocess.Popen[bytes]:
        """``args`` with this environment and ``env`` (``clean_env``: ``env`` alone, as under
        ``env -i``), on ``cpus``; ``kill``: stopped with SIGKILL at the end (a process that
        drains for long on SIGTERM: Knative's queue-proxy waits 30 s)."""
        # The affinity is set in the child before it runs the program: a Go runtime starts its
        # threads at once, and setting only the main thread's afterwards would miss them
        # (nginx's worker and every thread started later inherit it).
        proc = subprocess.Popen(
            args,
            env=dict(env or {}) if clean_env else {**os.environ, **(env or {})},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.procs.append(proc)
        if kill:
            self.killed.add(proc.pid)
        return proc

    def nginx(
        self, template: str, cpus: set[int] | None = None, **values: int | str
    ) -> subprocess.Popen[bytes]:
        """nginx with ``loadtests/nginx/<template>.conf``, its ``{name}`` placeholders filled."""
        text = (NGINX_DIR / f"{template}.conf").read_text()
        for k, v in {**values, "dir": self.tmp}.items():
            text = text.replace("{" + k + "}", str(v))
        conf = self.tmp / f"{template}.conf"
        conf.write_text(text)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return self.spawn([nginx, "-p", str(self.tmp), "-c", str(conf)], cpus=cpus)

    def queue_proxy(
        self,
        user_port: int,
        port: int,
        cpus: set[int] | None = None,
        checkout: Path | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        """``python -O -m queue_proxy`` (one process, CC=0 unless ``env`` says otherwise), of
        this checkout or of another one (``checkout``: its packages, compiled modules included,
        imported before this one's)."""
        env = {**queue_proxy_env(user_port, port), "QUEUE_LOG_LEVEL": "WARNING", **env}
        if checkout is not None:
            env.update(peers.checkout_env(checkout))
        cmd = [sys.executable, "-O", "-m", "queue_proxy"]
        return self.spawn(cmd, env, cpus, cwd=checkout)

    def knative_queue(
        self, binary: str, user_port: int, port: int, cpus: set[int] | None = None
    ) -> subprocess.Popen[bytes]:
        """Knative's queue-proxy (Go): CC=0, request metrics off, GOMAXPROCS = its pinned cores
        (:func:`loadtests.peers.knative_queue_env`). It binds 8022 and 9090 on all interfaces:
        run it in a network namespace of its own (:func:`loadtests.peers.own_network_namespace`)."""
        env = peers.knative_queue_env(user_port, port, gomaxprocs=len(cpus) if cpus else None)
        return self.spawn([binary], env, cpus, clean_env=True, kill=True)


def queue_proxy_env(user_port: int, port: int) -> dict[str, str]:
    """A benchmark queue-proxy's environment: loopback only, CC=0, free admin and metrics
    ports, no drain quiet period (the benchmarks stop it at once)."""
    return {
        "USER_PORT": str(user_port),
        "QUEUE_SERVING_PORT": str(port),
        "ADMIN_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
        "CONTAINER_CONCURRENCY": "0",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0",
    }


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    """Processes started for a run (and a temporary folder for their files), all terminated at
    the end, killed after 5 s."""
    with tempfile.TemporaryDirectory() as tmp:
        ps = Processes(Path(tmp))
        try:
            yield ps
        finally:
            for p in ps.procs:
                if p.pid in ps.killed:
                    p.kill()
                else:
                    p.terminate()
            for p in ps.procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def worker_pid(proc: subprocess.Popen[bytes]) -> int:
    """The process doing the work: nginx's one worker, else the process itself."""
    kids = children(proc.pid)
    return kids[0] if kids else proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: the scheduler's count in nanoseconds, summed
    over its threads (``/proc/<pid>/task/*/schedstat``), else ``/proc/<pid>/stat``'s in clock
    ticks (10 ms: too coarse for a turn of half a second)."""
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Resident memory now (``VmHWM``: at its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- load generators -------------------------------------------------------------------------


def wrk(port: int, seconds: float, conns: int = 64, host: str | None = None) -> tuple[float, int]:
    """Requests/s and requests done, with ``wrk -t1 -c<conns>``; raises on any error."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if m is None or n is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1)), int(n.group(1))


_HEY_BUILT = (
    Path(os.environ.get("ZEROSERVE_TOOLS_CACHE") or Path.home() / ".cache/zeroserve/tools")
    / "hey-v0.1.5-us/hey"
)


def hey_binary() -> str:
    """The hey to run: ``$ZEROSERVE_HEY``, else ``loadtests/build-hey.sh``'s build (its CSV
    times to 0.1 µs) when it exists, else ``hey`` on PATH (times to 0.1 ms)."""
    chosen = os.environ.get("ZEROSERVE_HEY")
    if chosen:
        return chosen
    if _HEY_BUILT.is_file() and os.access(_HEY_BUILT, os.X_OK):
        return str(_HEY_BUILT)
    return "hey"


def hey_step_ms(csv_time: str) -> float:
    """The step of hey's CSV times, in ms, from how many decimals (of seconds) it wrote:
    ``"0.0012"`` → 0.1, ``"0.0012345"`` → 0.0001."""
    _, _, decimals = csv_time.partition(".")
    return 1000 * 10.0 ** -len(decimals)


HEY_STEPS_MS: set[float] = set()  # the steps of hey's times seen in this process's turns


def hey(
    port: int, rate: float, seconds: float, workers: int = 10, host: str | None = None
) -> list[float]:
    """Latencies (ms) of ``hey -z <seconds>s -c <workers> -q <rate/workers>`` (to 0.1 ms, or
    to 0.1 µs with ``loadtests/build-hey.sh``'s build: :func:`hey_binary`; the steps seen are
    added to :data:`HEY_STEPS_MS`); raises on any status but 200.

    hey's workers start together, each on its own ticker, so the requests leave in bursts of
    ``workers`` every ``workers / rate`` s: this measures how a target takes a burst, not
    evenly spaced requests (:func:`open_loop` does that). ``-o csv`` gives every request's
    time, so the turns pool into one distribution, as the open-loop client's do; a request's
    time is counted without its connection's dial (``DNS+dialup``, a worker's first request)."""
    cmd = [hey_binary(), "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{rate / workers:g}"]
    if host:
        cmd += ["-host", host]
    out = subprocess.run(
        [*cmd, "-o", "csv", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
    rows = [line.split(",") for line in out.splitlines()[1:] if line]
    bad = [r[6] for r in rows if r[6] != "200"]
    if bad:
        raise RuntimeError(f"hey saw {len(bad)} non-200 responses, e.g. {bad[:3]}")
    if len(rows) < 0.9 * rate * seconds:  # errors (refused, reset) are left out of the CSV
        # requests a worker's ticker skipped while it was behind, or errors: hey's CSV holds
        # neither (its summary output, without -o csv, lists errors)
        print(
            f"hey: {len(rows)} answers of {rate * seconds:.0f} asked (skipped ticks or errors)",
            file=sys.stderr,
        )
    if rows:
        HEY_STEPS_MS.add(hey_step_ms(rows[0][0]))
    # without the dial: a worker's first request also times its connection's set-up (10 of a
    # 0.5 s turn's 500 requests at 1,000/s, enough to move a p99)
    return [max(0.0, float(r[0]) - float(r[1])) * 1000 for r in rows]


class Meter:
    """A quantity that only grows (``read``: a process's CPU seconds), summed over the spans
    between ``start()`` and ``stop()``."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.total = 0.0
        self._at = 0.0

    def start(self) -> None:
        self._at = self.read()

    def stop(self) -> None:
        self.total += self.read() - self._at


class _Client(asyncio.Protocol):
    def __init__(self, bad: list[bytes]) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: list[tuple[float, asyncio.Future[float]]] = []
        self.buf = b""
        self.bad = bad

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
            if not status_ok and len(self.bad) < 3:
                self.bad.append(self.buf[:end])
            self.buf = self.buf[end:]
            sched, fut = self.pending.pop(0)
            if not fut.done():
                # (a sleep may wake a hair before perf_counter's schedule: clamp at 0)
                fut.set_result(max(0.0, time.perf_counter() - sched) if status_ok else -1.0)


async def open_loop(
    port: int,
    rate: float,
    seconds: float,
    conns: int = 32,
    host: str | None = None,
    bad: list[bytes] | None = None,
    meter: Meter | None = None,
    request: bytes | None = None,
) -> list[float]:
    """Latencies (s) of requests sent at ``rate``/s, each timed from its scheduled send; -1 for
    an answer other than 200 (the first few are added to ``bad``). ``meter`` reads what it
    measures (a target's CPU time) around the timed requests only. ``request``: the raw
    request sent (a ``GET /`` by default)."""
    loop = asyncio.get_running_loop()
    bad = [] if bad is None else bad
    clients: list[_Client] = []
    for _ in range(conns):
        _, proto = await loop.create_connection(lambda: _Client(bad), "127.0.0.1", port)
        clients.append(proto)
    req = request or _request(port, host)
    # One untimed request on every connection first, so that the timed ones measure requests
    # on open, served connections, not the target accepting 32 new ones all at once.
    warm = []
    for c in clients:
        fut = loop.create_future()
        c.pending.append((time.perf_counter(), fut))
        assert c.transport is not None
        c.transport.write(req)
        warm.append(fut)
    await asyncio.wait_for(asyncio.gather(*warm), 30)
    # The client's own collector would stall it for milliseconds at a time, timed as the
    # target's: collect now, then not until the answers are in.
    gc.collect()
    gc.disable()
    await asyncio.sleep(0.05)  # (and let the machine settle after the collection)
    try:
        if meter is not None:
            meter.start()
        latencies = await _timed(clients, req, rate, seconds)
        if meter is not None:
            meter.stop()
        return latencies
    finally:
        gc.enable()
        for c in clients:
            if c.transport is not None:
                c.transport.close()


async def _timed(clients: list[_Client], req: bytes, rate: float, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
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
    # Wait for the answers still due only: gathering every future would schedule a callback
    # per request while the last answers arrive, and time the client's work as theirs.
    left = [f for f in futs if not f.done()]
    if left:
        await asyncio.wait_for(asyncio.gather(*left), 30)
    return [f.result() for f in futs]


def run_open_loop(
    port: int,
    rate: float,
    seconds: float,
    host: str | None = None,
    bad: list[bytes] | None = None,
    meter: Meter | None = None,
    *,
    conns: int = 32,
    request: bytes | None = None,
) -> list[float]:
    """:func:`open_loop` on a fresh uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(
            open_loop(port, rate, seconds, conns, host=host, bad=bad, meter=meter, request=request)
        )


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- targets, turns ----------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One target's results: latencies in ms (nan: not measured), CPU in µs per request and RSS
    in MiB of the proxy's process(es) (nan for the upstream itself)."""

    name: str
    capacity: float  # requests/s under wrk
    p50: float  # open loop at the rate
    p99: float
    p999: float
    hey_p50: float  # hey at the rate
    hey_p99: float
    cpu_us_capacity: float  # under wrk
    cpu_us_rate: float  # at the rate (open loop)
    rss_idle: float
    rss_peak: float


@dataclasses.dataclass
class Target:
    """One target's measurements, summed over its slices."""

    name: str
    port: int
    pids: list[int]  # the proxy's processes, for CPU and RSS; none for the upstream itself
    host: str | None = None  # the Host header every request carries (default 127.0.0.1:port)
    requests: int = 0  # done under wrk
    wrk_s: float = 0.0
    cpu_wrk_s: float = 0.0
    cpu_rate_s: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)  # s, open loop; -1: error
    hey_ms: list[float] = dataclasses.field(default_factory=list)
    rss_idle: float = math.nan

    def _cpu_s(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _rss(self, key: str) -> float:
        return sum(rss_mib(pid, key) for pid in self.pids) if self.pids else math.nan

    def idle(self) -> None:
        self.rss_idle = self._rss("VmRSS")

    def wrk_slice(self, seconds: float) -> None:
        c0 = self._cpu_s()
        rps, done = wrk(self.port, seconds, host=self.host)
        self.cpu_wrk_s += self._cpu_s() - c0
        self.requests += done
        self.wrk_s += done / rps

    def rate_slice(self, rate: float, seconds: float) -> None:
        bad: list[bytes] = []
        # the CPU of the timed requests only, not of a turn's connections opened and closed
        meter = Meter(self._cpu_s)
        lat = run_open_loop(self.port, rate, seconds, self.host, bad, meter)
        self.cpu_rate_s += meter.total
        errors = sum(1 for v in lat if v < 0)
        if errors:
            print(f"{self.name}: {errors} non-200 responses, e.g. {bad}", file=sys.stderr)
        self.latencies += lat

    def hey_slice(self, rate: float, seconds: float, workers: int) -> None:
        self.hey_ms += hey(self.port, rate, seconds, workers, self.host)

    def row(self) -> Row:
        ok = [v * 1000 for v in self.latencies if v >= 0]
        per = 1e6 if self.pids else math.nan
        return Row(
            self.name,
            self.requests / max(self.wrk_s, 1e-9),
            statistics.median(ok) if ok else math.nan,
            pct(ok, 99),
            pct(ok, 99.9),
            pct(self.hey_ms, 50),
            pct(self.hey_ms, 99),
            self.cpu_wrk_s / max(self.requests, 1) * per,
            self.cpu_rate_s / max(len(self.latencies), 1) * per,
            self.rss_idle,
            self._rss("VmHWM"),
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of :func:`measure_all`, the same in every hop benchmark."""
    p.add_argument("--seconds", type=float, default=10.0, help="of each measure, per target")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s for latency")
    p.add_argument(
        "--slice", type=float, default=2.0, help="seconds per turn under wrk (targets take turns)"
    )
    p.add_argument(
        "--rate-slice",
        type=float,
        default=0.5,
        help="seconds per turn at the rate (open loop and hey; at most --slice)",
    )
    p.add_argument(
        "--pin", action="store_true", help="proxies on CPU 0, upstream and load on CPU 1"
    )


def measure_all(
    targets: Sequence[Target],
    args: argparse.Namespace,
    load_cpus: set[int] | None = None,
    hey_workers: int = 0,
) -> list[Row]:
    """Each target gets ``--seconds`` under wrk, ``--seconds`` at the rate with the open-loop
    client and, with ``hey_workers``, ``--seconds`` with hey, in turns (direct, nginx, proxy,
    …, direct, …): load from elsewhere on the machine then falls on every column alike, not on
    whichever target ran last. Turns under wrk last ``--slice`` seconds; turns at the rate,
    ``--rate-slice`` seconds, several between two wrk turns: a p99 is decided by the worst
    percent of a run, and the machine's bursts (a few hundred ms) spread over every target
    when the turns are short. The load generators run on ``load_cpus`` (this process and its
    children)."""
    if not 0 < args.rate_slice <= args.slice:
        raise ValueError(
            f"--rate-slice {args.rate_slice}: must be > 0 and at most --slice {args.slice}"
        )
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    for t in targets:
        t.idle()
        run_open_loop(t.port, args.rate, 1.0, t.host)  # warm-up (connections, probes)
    slices = max(1, round(args.seconds / args.slice))
    each = args.seconds / slices
    turns = max(1, round(each / args.rate_slice))  # turns at the rate per wrk turn
    for i in range(slices):
        print(f"slice {i + 1}/{slices}", file=sys.stderr)
        for t in targets:
            t.wrk_slice(each)
        for _ in range(turns):
            for t in targets:
                t.rate_slice(args.rate, each / turns)
        if hey_workers:
            for _ in range(turns):
                for t in targets:
                    t.hey_slice(args.rate, each / turns, hey_workers)
    return [t.row() for t in targets]


# --- the table ----------------------------------------------------------------------------------


Column = tuple[str, Callable[[Row], str]]


def _num(fmt: str) -> Callable[[float], str]:
    return lambda v: "" if math.isnan(v) else format(v, fmt)


def columns(
    rows: Sequence[Row],
    rate: float,
    times: str | None = None,
    hey_workers: int = 0,
    rss: bool = False,
) -> list[Column]:
    """The table's columns: capacity (and × the ``times`` target's), latency at the rate with
    the open-loop client and added over the first row (direct), the same with hey (with
    ``hey_workers``), CPU per request, RSS (with ``rss``)."""
    direct = rows[0]
    ms, us, mib = _num(".2f"), _num(".0f"), _num(".1f")
    cols: list[Column] = [
        ("target", lambda r: r.name),
        ("capacity (req/s, wrk -c64)", lambda r: f"{r.capacity:,.0f}"),
    ]
    if times is not None:
        base = next(r for r in rows if r.name == times)
        cols.append((f"× {times}", lambda r: f"{r.capacity / base.capacity:.2f}"))
    cols += [
        (f"p50 ms @ {rate:g}/s", lambda r: ms(r.p50)),
        ("p99 ms", lambda r: ms(r.p99)),
        ("p99.9 ms", lambda r: ms(r.p999)),
        ("added p50 ms", lambda r: ms(r.p50 - direct.p50)),
        ("added p99 ms", lambda r: ms(r.p99 - direct.p99)),
    ]
    if hey_workers:
        cols += [
            (f"hey -c {hey_workers} p50 ms", lambda r: ms(r.hey_p50)),
            ("hey p99 ms", lambda r: ms(r.hey_p99)),
            ("hey added p50 ms", lambda r: ms(r.hey_p50 - direct.hey_p50)),
            ("hey added p99 ms", lambda r: ms(r.hey_p99 - direct.hey_p99)),
        ]
    cols += [
        ("CPU µs/req at capacity", lambda r: us(r.cpu_us_capacity)),
        ("CPU µs/req @ rate", lambda r: us(r.cpu_us_rate)),
    ]
    if rss:
        cols += [
            ("RSS idle MiB", lambda r: mib(r.rss_idle)),
            ("RSS peak MiB", lambda r: mib(r.rss_peak)),
        ]
    return cols


def print_table(rows: Sequence[Row], cols: Sequence[Column]) -> None:
    print("| " + " | ".join(head for head, _ in cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(cell(r) for _, cell in cols) + " |")


def print_goals(
    rows: Sequence[Row],
    name: str,
    base: str = "nginx",
    added: Sequence[str] = ("p99",),
    cpu_us: float | None = None,
) -> None:
    """Goal lines: ``name``'s capacity ≥ 0.3× ``base``'s, its added latency (``added``: Row
    fields, over the first row) ≤ 2× ``base``'s, and with ``cpu_us`` its CPU per request at
    the rate at most that."""
    by = {r.name: r for r in rows}
    direct, t, b = rows[0], by[name], by[base]
    with_hey = any(f.startswith("hey_") for f in added)
    print(f"\ncapacity {name}/{base} = {t.capacity / b.capacity:.2f} (goal ≥ 0.3)")
    for field in added:
        mine = getattr(t, field) - getattr(direct, field)
        theirs = getattr(b, field) - getattr(direct, field)
        # (where the base adds nothing measurable the ratio says nothing: n/a)
        ratio = f"{mine / theirs:.2f}" if theirs > 0 else "n/a"
        how = " (hey)" if field.startswith("hey_") else " (open loop)" if with_hey else ""
        stat = field.removeprefix("hey_")
        print(f"added {stat}{how} {name}/{base} = {ratio} ({mine:.2f} / {theirs:.2f} ms; goal ≤ 2)")
    if with_hey and HEY_STEPS_MS:
        step = max(HEY_STEPS_MS)
        hint = " (loadtests/build-hey.sh builds one that times to 0.0001 ms)" if step >= 0.1 else ""
        print(f"hey ({hey_binary()}) timed to {step:g} ms{hint}")
    if cpu_us is not None:
        print(f"CPU µs/request of {name} at the rate = {t.cpu_us_rate:.0f} (goal ≤ {cpu_us:g})")


_RATIO_FIELDS = {
    "capacity": ("capacity", ",.0f"),
    "cpu_us_rate": ("CPU µs/request at the rate", ".0f"),
}


def ratio_goal(rows: Sequence[Row], field: str, name: str, other: str, goal: str) -> str:
    """A goal line on the ratio of two targets' ``field`` (``capacity`` or ``cpu_us_rate``):
    ``capacity queue-proxy/nginx = 0.87 (82,312 / 94,700; goal ≥ 0.3)``."""
    by = {r.name: r for r in rows}
    mine, theirs = getattr(by[name], field), getattr(by[other], field)
    what, fmt = _RATIO_FIELDS[field]
    ratio = f"{mine / theirs:.2f}" if theirs > 0 else "n/a"
    return f"{what} {name}/{other} = {ratio} ({mine:{fmt}} / {theirs:{fmt}}; goal {goal})"

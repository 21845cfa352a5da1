"""Queue-proxy hop benchmark: capacity, added latency, CPU and RSS against direct and nginx.

    .venv/bin/python -m loadtests.bench_hop --seconds 10 --rate 1000

Starts nginx (1 worker, ``return 200`` with a small JSON body) as the upstream, nginx (1 worker)
as a reverse proxy to it, and ``python -m queue_proxy`` (one process, CC=0) in front of it; then,
per target: capacity with ``wrk -t1 -c50``, latency at a fixed ``--rate`` with ``hey``, CPU time
of the proxy process per 1,000 requests during the fixed-rate run and during the capacity run,
RSS idle and peak. The helpers
(:func:`start_nginx`, :func:`start_queue_proxy`, :func:`wrk_capacity`, :func:`hey_latency`,
:func:`cpu_seconds`) are meant for other targets too (``--target activator`` later).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NGINX_DIR = Path(__file__).parent / "nginx"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling with a deadline
    raise TimeoutError(f"port {port} not listening after {timeout_s}s")


@contextmanager
def start_nginx(template: str, **values: int | str) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with ``loadtests/nginx/<template>.conf`` (``{name}`` placeholders filled)."""
    with tempfile.TemporaryDirectory() as d:
        text = (NGINX_DIR / f"{template}.conf").read_text()
        for k, v in {**values, "dir": d}.items():
            text = text.replace("{" + k + "}", str(v))
        conf = Path(d) / "nginx.conf"
        conf.write_text(text)
        proc = subprocess.Popen(["nginx", "-p", d, "-c", str(conf)])
        try:
            wait_port(int(values["port"]))
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def start_queue_proxy(user_port: int, port: int, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m queue_proxy`` (-O) in front of ``user_port``."""
    full = {
        **os.environ,
        "USER_PORT": str(user_port),
        "QUEUE_SERVING_PORT": str(port),
        "ADMIN_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0",
        "QUEUE_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-O", "-m", "queue_proxy"], env=full)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk_capacity(url: str, seconds: int, connections: int = 50) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1))


def hey_latency(url: str, rate: int, seconds: int, workers: int = 10) -> tuple[float, float, int]:
    """p50 and p99 in ms, and the number of requests, at ``rate`` requests/s."""
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(rate / workers), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def pct(p: int) -> float:
        m = re.search(rf"{p}% in ([\d.]+) secs", out)
        assert m, out
        return float(m.group(1)) * 1000

    m = re.search(r"\[200\]\s+(\d+) responses", out)
    return pct(50), pct(99), int(m.group(1)) if m else 0


@dataclass
class Row:
    name: str
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    cpu_ms_per_1k: float = 0.0
    cpu_ms_per_1k_cap: float = 0.0  # during the capacity run (wrk, saturated)
    rss_idle: float = 0.0
    rss_peak: float = 0.0


def measure(name: str, url: str, pid: int | None, args: argparse.Namespace) -> Row:
    row = Row(name)
    if pid is not None:
        row.rss_idle = rss_mib(pid)
    c0 = cpu_seconds(pid) if pid is not None else 0.0
    row.p50, row.p99, n = hey_latency(url, args.rate, args.seconds)
    if pid is not None and n:
        row.cpu_ms_per_1k = (cpu_seconds(pid) - c0) * 1000 / n * 1000
    c1 = cpu_seconds(pid) if pid is not None else 0.0
    row.rps = wrk_capacity(url, args.seconds)
    if pid is not None:
        row.cpu_ms_per_1k_cap = (cpu_seconds(pid) - c1) * 1000 / (row.rps * args.seconds) * 1000
        row.rss_peak = rss_mib(pid, "VmHWM")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    args = ap.parse_args()
    up, ngx, qp = free_port(), free_port(), free_port()
    rows = []
    with start_nginx("upstream", port=up):
        rows.append(measure("direct", f"http://127.0.0.1:{up}/", None, args))
        with start_nginx("proxy", port=ngx, upstream_port=up) as nproc:
            rows.append(measure("nginx", f"http://127.0.0.1:{ngx}/", worker_pid(nproc), args))
        with start_queue_proxy(up, qp) as qproc:
            rows.append(measure("queue-proxy", f"http://127.0.0.1:{qp}/", qproc.pid, args))
    direct, nginx = rows[0], rows[1]
    print(
        "| target | req/s (wrk -t1 -c50) | × nginx | p50 ms | p99 ms | p50 added | p99 added "
        "| CPU ms / 1k req at --rate | CPU ms / 1k req at capacity | RSS idle MiB | RSS peak MiB |"
    )
    print("|" + " --- |" * 11)
    for r in rows:
        print(
            f"| {r.name} | {r.rps:,.0f} | {r.rps / nginx.rps:.2f} | {r.p50:.2f} | {r.p99:.2f} "
            f"| {r.p50 - direct.p50:+.2f} | {r.p99 - direct.p99:+.2f} | {r.cpu_ms_per_1k:.1f} "
            f"| {r.cpu_ms_per_1k_cap:.1f} | {r.rss_idle:.1f} | {r.rss_peak:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

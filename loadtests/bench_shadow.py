"""Shadow traffic's effect on the primary (issue 23): the activator with no shadow, and with a
shadow revision that gets a copy of every request and answers at once, answers 500, or answers
in 10 s.

    .venv/bin/python -m loadtests.bench_shadow --seconds 10 [--rate 1000 --pin]

Each in its own process: the fast upstream of ``bench_activator`` (200 ``queue`` to everything),
a 500 upstream and a 10-s upstream (both answer the activator's probe at once), and one activator
per case (``build_activator``, the service ``bench`` with its primary revision on the fast
upstream and, but for the first case, ``{revisionName: bench-2, shadow: true, percent: 100}`` on
the case's upstream). The cases are measured as ``bench_activator`` measures the activator
(:func:`loadtests.harness.measure_all`: capacity under ``wrk``, latency at the rate with the
open-loop client, CPU per request, in turns). The primary's answers are what is timed: a shadow
that fails or is slow must change neither them nor their latency; what it costs is the
activator's CPU for the copies (and, with a 10-s shadow, the copies beyond the 100 in flight are
dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import cast

import uvloop

from loadtests import harness
from loadtests.bench_activator import HOST, serve_activator
from loadtests.harness import Target

_PROBE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nqueue"
_ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom"
_SLOW_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SLOW_S = 10.0


class _Shadow(asyncio.Protocol):
    """An upstream that answers the probe at once and anything else with 500 (``slow_s`` 0) or
    with 200 after ``slow_s`` seconds (GETs: one head per request)."""

    def __init__(self, slow_s: float) -> None:
        self.slow_s = slow_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
            if b"k-network-probe" in head:
                self._write(_PROBE)
            elif self.slow_s:
                asyncio.get_running_loop().call_later(self.slow_s, self._write, _SLOW_OK)
            else:
                self._write(_ERROR)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def _serve_shadow(port: int, slow_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Shadow(slow_s), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def run(args: argparse.Namespace) -> int:
    proxy_cpus, load_cpus = harness.pinning(args.pin)
    me = [sys.executable, "-O", "-m", "loadtests.bench_shadow"]
    up, err, slow = (harness.free_port() for _ in range(3))
    with harness.processes() as ps:
        ps.spawn([sys.executable, "-O", "-m", "loadtests.bench_activator", "upstream",
                  "--port", str(up)], cpus=load_cpus)  # fmt: skip
        ps.spawn([*me, "shadow", "--port", str(err)], cpus=load_cpus)
        ps.spawn([*me, "shadow", "--port", str(slow), "--slow", str(SLOW_S)], cpus=load_cpus)
        for port in (up, err, slow):
            harness.wait_port(port)
        targets = []
        for name, shadow in (
            ("no shadow", ""),
            ("shadow 100 %, answers at once", f"127.0.0.1:{up}"),
            ("shadow 100 %, answers 500", f"127.0.0.1:{err}"),
            (f"shadow 100 %, answers in {SLOW_S:g} s", f"127.0.0.1:{slow}"),
        ):
            port = harness.free_port()
            cmd = [*me, "activator", "--port", str(port), "--primary", f"127.0.0.1:{up}"]
            proc = ps.spawn([*cmd, "--shadow", shadow], cpus=proxy_cpus)
            harness.wait_ok(port, HOST)
            targets.append(Target(name, port, [proc.pid], HOST))
        rows = harness.measure_all(targets, args, load_cpus)
    harness.print_table(rows, harness.columns(rows, args.rate, rss=True))
    base = rows[0]
    for row in rows[1:]:
        print(
            f"{row.name}: p50 {row.p50 - base.p50:+.2f} ms, p99 {row.p99 - base.p99:+.2f} ms, "
            f"CPU {row.cpu_us_rate - base.cpu_us_rate:+.0f} µs/request at the rate, "
            f"capacity {row.capacity / base.capacity:.2f}× against no shadow"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_shadow", description=__doc__)
    sub = p.add_subparsers(dest="command")
    sh = sub.add_parser("shadow")
    sh.add_argument("--port", type=int, required=True)
    sh.add_argument("--slow", type=float, default=0.0)
    ac = sub.add_parser("activator")
    ac.add_argument("--port", type=int, required=True)
    ac.add_argument("--primary", required=True)
    ac.add_argument("--shadow", default="")
    harness.add_arguments(p)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "shadow":
        uvloop.run(_serve_shadow(args.port, args.slow))
        return 0
    if args.command == "activator":
        uvloop.run(serve_activator(args.port, args.primary, args.shadow))
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

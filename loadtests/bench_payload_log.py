"""Payload logging's cost and its bounds (issue 23): the queue-proxy at a fixed rate with logging
off, with a healthy sink, with a sink that answers in 10 s, and with a sink that is down.

``python -m loadtests.bench_payload_log --seconds 20``. An nginx upstream (``return 200``) and
one queue-proxy per case (``python -O -m queue_proxy``, CC=0, its dataplane compiled), each in
its own process; every case gets the same open-loop load (``loadtests.harness.open_loop``: a
small JSON ``POST`` at ``--rate``/s, timed from each request's scheduled send), in turns of
``--rate-slice`` seconds so that load from elsewhere on the machine falls on every case alike.
The sinks are processes of this module (``sink`` subcommand, uvloop, raw HTTP): the healthy
one answers 202 at once and counts the CloudEvents it gets; the slow one answers after 10 s.

Printed per case: p50/p99/p99.9 latency and the added p99 over logging off, the events the
healthy sink received against the events sent (two per request: ``events lost`` must be 0),
the queue-proxy's payload counters (delivered, dropped, gave up), and its RSS at the end and at
its peak (``VmHWM``): with a sink down or slow the queue is bounded (10,000 events, 32 MiB), so
RSS stays flat however long it runs (``--seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import socket
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests import harness

BODY = json.dumps({"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}).encode()
SLOW_S = 10.0


def _body(size: int) -> bytes:
    """The request body: BODY, or a JSON body of about ``size`` bytes."""
    if size <= len(BODY):
        return BODY
    return json.dumps({"instances": [[0.5] * ((size - 20) // 5)]}).encode()


def _request(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/models/iris:predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# --- the sink (a subprocess) -------------------------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    """Reads requests with Content-Length; answers 202 (after ``delay_s``), counts events."""

    def __init__(self, state: dict[str, int], delay_s: float) -> None:
        self.state = state
        self.delay_s = delay_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if head.startswith(b"get /count"):
                body = json.dumps(self.state).encode()
                self._answer(b"200 OK", body)
                continue
            self.state["events"] += 1
            if b"ce-type: org.kubeflow.serving.inference.request" in head:
                self.state["requests"] += 1
            if self.delay_s:
                asyncio.get_running_loop().call_later(self.delay_s, self._answer, b"202 Accepted")
            else:
                self._answer(b"202 Accepted")

    def _answer(self, status: bytes, body: bytes = b"") -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
            )


async def _sink(port: int, delay_s: float) -> None:
    state = {"events": 0, "requests": 0}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _SinkProtocol(state, delay_s), "127.0.0.1", port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def _sink_count(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
        data = json.loads(resp.read())
    return {str(k): int(v) for k, v in data.items()}


# --- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    port: int
    pid: int
    metrics_port: int
    sink_port: int | None = None  # the healthy sink's, whose count is checked
    latencies: list[float] = field(default_factory=list)
    sent: int = 0  # requests, warm-ups included
    cpu_s: float = 0.0  # the queue-proxy's, over the timed requests

    def payload_counts(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("queue_proxy_payload_events_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = float(line.rsplit(" ", 1)[1])
        return out


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sink"]:
        p = argparse.ArgumentParser(prog="python -m loadtests.bench_payload_log sink")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--delay", type=float, default=0.0)
        a = p.parse_args(argv[1:])
        import uvloop

        uvloop.run(_sink(a.port, a.delay))
        return 0
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_payload_log", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="at the rate, per case")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s")
    p.add_argument("--rate-slice", type=float, default=1.0, help="seconds per turn")
    p.add_argument("--pin", action="store_true", help="proxies on CPU 0, load on CPU 1")
    p.add_argument(
        "--body-bytes", type=int, default=0, help="request body size (default: a 59-byte JSON)"
    )
    args = p.parse_args(argv)
    body = _body(args.body_bytes)
    proxy_cpus, load_cpus = harness.pinning(args.pin)
    up = _free()
    healthy, slow, down = _free(), _free(), _free()
    with harness.processes() as ps:
        ps.nginx("upstream", load_cpus, port=up)
        mod = [sys.executable, "-O", "-m", "loadtests.bench_payload_log", "sink"]
        ps.spawn([*mod, "--port", str(healthy)], cpus=load_cpus)
        ps.spawn([*mod, "--port", str(slow), "--delay", str(SLOW_S)], cpus=load_cpus)
        cases: list[Case] = []
        for name, sink in (
            ("logging off", None),
            ("healthy sink", healthy),
            (f"sink answers in {SLOW_S:g} s", slow),
            ("sink down", down),
        ):
            port, metrics = _free(), _free()
            env = {"METRICS_PORT": str(metrics)}
            if sink is not None:
                env["QUEUE_LOGGER_URL"] = f"http://127.0.0.1:{sink}/events"
            env = {**harness.queue_proxy_env(up, port), "QUEUE_LOG_LEVEL": "WARNING", **env}
            qp = ps.spawn([sys.executable, "-O", "-m", "queue_proxy"], env, proxy_cpus)
            cases.append(Case(name, port, qp.pid, metrics, healthy if sink == healthy else None))
        for port in (up, healthy, slow):
            harness.wait_port(port)
        for c in cases:
            harness.wait_port(c.port)
        if load_cpus:
            import os

            os.sched_setaffinity(0, load_cpus)
        turns = max(1, round(args.seconds / args.rate_slice))
        each = args.seconds / turns
        for i in range(turns):
            if i % 10 == 0:
                print(f"turn {i + 1}/{turns}", file=sys.stderr)
            for c in cases:
                meter = harness.Meter(functools.partial(harness.cpu_seconds, c.pid))
                lat = harness.run_open_loop(
                    c.port, args.rate, each, meter=meter, request=_request(c.port, body)
                )
                c.cpu_s += meter.total
                c.latencies += lat
                c.sent += len(lat) + 32  # (and one untimed warm-up on each of 32 connections)
        time.sleep(2.0)  # the last events out to the healthy sink
        off = [v * 1000 for v in cases[0].latencies if v >= 0]
        print(
            f"\n{args.rate:g} requests/s, {args.seconds:g} s per case, "
            f"{len(body)}-byte JSON POST, nginx upstream\n"
        )
        head = (
            "| case | p50 ms | p99 ms | p99.9 ms | added p99 ms | errors | events sent | "
            "events at sink | lost | delivered | dropped | gave up | CPU µs/req | "
            "RSS MiB end / peak |"
        )
        print(head)
        print("| --- " * 14 + "|")
        for c in cases:
            ok = [v * 1000 for v in c.latencies if v >= 0]
            errors = len(c.latencies) - len(ok)
            counts = c.payload_counts() if c.name != "logging off" else {}
            at_sink = sent = lost = "-"
            if c.sink_port is not None:
                got = _sink_count(c.sink_port)["events"]
                at_sink, sent, lost = str(got), str(2 * c.sent), str(2 * c.sent - got)
            added = harness.pct(ok, 99) - harness.pct(off, 99)
            print(
                f"| {c.name} | {harness.pct(ok, 50):.2f} | {harness.pct(ok, 99):.2f} | "
                f"{harness.pct(ok, 99.9):.2f} | "
                f"{'-' if c.name == 'logging off' else f'{added:+.2f}'} | {errors} | {sent} | "
                f"{at_sink} | {lost} | {counts.get('delivered', 0):.0f} | "
                f"{counts.get('dropped', 0):.0f} | {counts.get('gave_up', 0):.0f} | "
                f"{c.cpu_s / max(len(c.latencies), 1) * 1e6:.0f} | "
                f"{harness.rss_mib(c.pid):.1f} / {harness.rss_mib(c.pid, 'VmHWM'):.1f} |"
            )
        for c in cases:
            if not c.latencies or math.isnan(harness.pct(c.latencies, 50)):
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

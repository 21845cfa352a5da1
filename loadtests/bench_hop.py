"""Queue-proxy hop benchmark: capacity, added latency, CPU and RSS against direct and nginx.

    .venv/bin/python -m loadtests.bench_hop --seconds 10 [--rate 1000 --slice 2 --rate-slice 0.5
                                              --hey-workers 10 --pin --python-core --relay]

Starts nginx (1 worker, ``return 200`` with a small JSON body) as the upstream ("direct"),
nginx (1 worker, keep-alive upstream) as a reverse proxy to it, and the queue-proxy
(``python -O -m queue_proxy``, one process, CC=0) in front of it. Then, with
:mod:`loadtests.harness`, in turns (direct, nginx, queue-proxy, direct, …; ``--slice`` seconds
under wrk, ``--rate-slice`` at the rate) until each target has had ``--seconds`` of each:
capacity with ``wrk -t1 -c64``; latency at ``--rate`` requests/s with an open-loop client (32
keep-alive connections, each request timed from its scheduled send, so a stall counts) and
with ``hey -c <--hey-workers> -q rate/workers``
(its workers start in phase: 10 at 1,000/s send bursts of 10 every 10 ms, timed to 0.1 ms);
CPU of the proxy process (nginx's worker) per request under wrk and at the rate; its RSS idle
and at peak. The cores are shared, so compare the columns of one run; ``--pin`` puts the
proxies on CPU 0, the upstream and the load generators on CPU 1. Last, the goal lines:
capacity ≥ 0.3× nginx's, added p50 and p99 ≤ 2× nginx's (open loop and hey), CPU ≤ 100 µs
per request at the rate. ``--python-core`` adds a second queue-proxy that runs the dataplane's
Python source (``ZEROSERVE_PURE_PYTHON=1``) beside the compiled one, to measure what compiling
buys. ``--relay`` adds :mod:`loadtests.relay`, a uvloop TCP relay that parses nothing: the floor
of a Python proxy on this machine, to tell what the runtime costs from what the queue-proxy does.

``--tracing`` adds a queue-proxy that traces every request (``tracing-sampling-rate`` 1.0, spans
exported by OTLP/HTTP to :mod:`loadtests.otlp_sink`) and prints the CPU per request it adds at
the rate.

``--knative`` adds Knative Serving's own queue-proxy (Go, built by
``loadtests/build-knative-queue.sh`` when not yet cached; CC=0, request metrics off, GOMAXPROCS=1
with ``--pin``) and the goal lines against it: capacity ≥ 4× its, CPU per request at the rate
≤ 0.5× its. It binds 8022 and 9090 on all interfaces, so with ``--knative`` the whole run
re-executes itself in a network namespace of its own (``unshare --net``: root). ``--baseline
DIR`` adds the queue-proxy of another checkout (a ``git worktree`` of an older commit, its
compiled modules built there) and the goal line: capacity within 5 % of its (≥ 0.95×).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import dataplane
from cluster.observability import Tracing, tracing_data, write_folder
from loadtests import harness, peers
from loadtests.harness import Target

KNATIVE = "Knative queue-proxy (Go)"
TRACED = "queue-proxy (tracing 1.0)"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_hop")
    harness.add_arguments(p)
    p.add_argument("--hey-workers", type=int, default=10, help="hey -c (0: no hey)")
    p.add_argument(
        "--python-core",
        action="store_true",
        help="also measure a queue-proxy on the dataplane's pure-Python source",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="also measure a Python TCP relay that parses nothing (loadtests.relay)",
    )
    p.add_argument(
        "--knative",
        action="store_true",
        help="also measure Knative's queue-proxy (Go); runs all in a network namespace (root)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the queue-proxy of another checkout (its modules compiled)",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="also measure a queue-proxy that traces every request (sampling 1.0, OTLP/HTTP "
        "to a local sink, loadtests.otlp_sink)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.baseline is not None:
        problem = peers.checkout_problem(args.baseline)
        if problem:
            p.error(f"--baseline {problem}")
    if args.knative:
        # Knative's queue-proxy binds 8022 and 9090 on all interfaces: the whole run moves into
        # a network namespace of its own (built first: no registry is reachable from there).
        binary = peers.knative_queue_binary()
        rc = peers.own_network_namespace(
            "loadtests.bench_hop", argv, ZEROSERVE_KNATIVE_QUEUE=binary
        )
        if rc is not None:
            return rc
    proxy_cpus, load_cpus = harness.pinning(args.pin)
    up, ngx, qp, qp_py, relay_port, base_port, kn_port = (harness.free_port() for _ in range(7))
    with harness.processes() as ps:
        ps.nginx("upstream", load_cpus, port=up)
        nginx = ps.nginx("proxy", proxy_cpus, port=ngx, upstream_port=up)
        queue_proxy = ps.queue_proxy(up, qp, proxy_cpus)
        for port in (up, ngx, qp):
            harness.wait_ok(port)
        name = "queue-proxy" if dataplane.compiled() else "queue-proxy (python core)"
        targets = [
            Target("direct", up, []),
            Target("nginx", ngx, [harness.worker_pid(nginx)]),
            Target(name, qp, [queue_proxy.pid]),
        ]
        baseline = ""
        if args.baseline is not None:
            baseline = f"queue-proxy (baseline {peers.checkout_label(args.baseline)})"
            base = ps.queue_proxy(up, base_port, proxy_cpus, checkout=args.baseline)
            harness.wait_ok(base_port)
            targets.append(Target(baseline, base_port, [base.pid]))
        if args.knative:
            knative = ps.knative_queue(peers.knative_queue_binary(), up, kn_port, proxy_cpus)
            harness.wait_ok(kn_port)
            targets.append(Target(KNATIVE, kn_port, [knative.pid]))
        if args.tracing:
            sink = harness.free_port()
            ps.spawn(
                [sys.executable, "-m", "loadtests.otlp_sink", "--port", str(sink)], None, load_cpus
            )
            harness.wait_port(sink)
            folder = ps.tmp / "observability"
            endpoint = f"http://127.0.0.1:{sink}/v1/traces"
            on = Tracing(protocol="http/protobuf", endpoint=endpoint, sampling_rate=1.0)
            write_folder(folder, tracing_data(on))
            traced_port = harness.free_port()
            traced = ps.queue_proxy(
                up, traced_port, proxy_cpus, QUEUE_OBSERVABILITY_DIR=str(folder)
            )
            harness.wait_ok(traced_port)
            targets.append(Target(TRACED, traced_port, [traced.pid]))
        if args.python_core:
            python_core = ps.queue_proxy(up, qp_py, proxy_cpus, ZEROSERVE_PURE_PYTHON="1")
            harness.wait_ok(qp_py)
            targets.append(Target("queue-proxy (python core)", qp_py, [python_core.pid]))
        if args.relay:
            relay_args = ["--port", str(relay_port), "--upstream-port", str(up)]
            relay = ps.spawn(
                [sys.executable, "-O", "-m", "loadtests.relay", *relay_args], cpus=proxy_cpus
            )
            harness.wait_ok(relay_port)
            targets.append(Target("python relay (no HTTP)", relay_port, [relay.pid]))
        rows = harness.measure_all(targets, args, load_cpus, args.hey_workers)
    cols = harness.columns(rows, args.rate, "nginx", args.hey_workers, rss=True)
    harness.print_table(rows, cols)
    hey = ("hey_p50", "hey_p99") if args.hey_workers else ()
    harness.print_goals(rows, name, added=("p50", "p99", *hey), cpu_us=100)
    if baseline:
        print(harness.ratio_goal(rows, "capacity", name, baseline, "≥ 0.95: within 5 %"))
    if args.tracing:
        by = {r.name: r for r in rows}
        added = by[TRACED].cpu_us_rate - by[name].cpu_us_rate
        print(f"tracing every request: +{added:.1f} µs CPU per request at {args.rate:g}/s")
    if args.knative:
        print(harness.ratio_goal(rows, "capacity", name, KNATIVE, "≥ 4"))
        print(harness.ratio_goal(rows, "cpu_us_rate", name, KNATIVE, "≤ 0.5"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

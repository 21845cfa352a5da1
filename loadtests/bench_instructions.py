"""Instructions per proxied request of the queue-proxy, counted by callgrind: a measure that the
machine's noise does not move, for comparing two versions of the per-request path.

    .venv/bin/python -m loadtests.bench_instructions [--requests 1000,4000 --conns 4]
        [--cache] [--targets compiled,python,relay] [--baseline DIR]

Each target (the compiled queue-proxy; the Python source with ``ZEROSERVE_PURE_PYTHON=1``; the
TCP relay of ``loadtests.relay``, which parses nothing) runs under ``valgrind --tool=callgrind``
in front of the nginx upstream of ``bench_hop``, twice: once answering the smaller number of
``--requests``, once the larger (``hey -n N -c --conns``, keep-alive). The difference of the two
totals over the difference of the request counts is the cost of one request without the
start-up and shutdown: user-space instructions (the kernel's are not counted), with the share of
the interpreter's eval loop. Under callgrind the process runs about 50× slower, so a run takes a
minute or two.

``--baseline DIR`` adds the compiled queue-proxy of another checkout (a ``git worktree`` of an
older commit, its modules built there), so that a change's instructions per request are counted
before and after in one run.

``--cache`` also simulates small first-level caches (8 KiB, 2-way, 64-byte lines, for code and
for data) and reports their misses per request. One request's path overflows such a cache, so
its misses count about how many distinct lines of code and data a request touches: what a
process woken for each request (as at a fixed 1,000 requests/s) pays for when its caches went
cold in between, which the instruction count misses (docs/benchmarks.md, "What made the core
fast"). With ``--conns 1`` every request is handled alone, as at such a rate.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import dataplane
from loadtests import harness, peers

_EVAL = "_PyEval_EvalFrameDefault"
_TARGETS = ("compiled", "python", "relay")
# small enough that one request overflows them (valgrind needs a last level too)
_CACHE_SIM = ("--cache-sim=yes", "--I1=8192,2,64", "--D1=8192,2,64", "--LL=65536,2,64")


def _totals(out: Path) -> dict[str, int]:
    """A callgrind output's program totals by event (``Ir``; with the cache simulated also
    ``I1mr``, ``D1mr``, ``D1mw``, …), and ``eval``: the instructions of the eval loop's own code."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events: list[str] = []
    totals: dict[str, int] = {"eval": 0}
    for line in text.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
            continue
        counts = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) \([\s\d.]+%\)", line)]
        if not events or len(counts) != len(events):
            continue
        if "PROGRAM TOTALS" in line:
            totals.update(zip(events, counts, strict=True))
        elif _EVAL in line:
            totals["eval"] += counts[events.index("Ir")]
    if "Ir" not in totals:
        raise RuntimeError(f"{out}: no program totals in callgrind_annotate's output")
    return totals


def _command(
    target: str, upstream: int, port: int, baseline: Path | None
) -> tuple[list[str], dict[str, str], Path | None]:
    """The target's command line, environment and working directory (``baseline``: the other
    checkout, for the ``baseline`` target)."""
    if target == "relay":
        relay = ["--port", str(port), "--upstream-port", str(upstream)]
        return [sys.executable, "-O", "-m", "loadtests.relay", *relay], dict(os.environ), None
    checkout = baseline if target == "baseline" else None
    env = {
        **os.environ,
        **harness.queue_proxy_env(upstream, port),
        "QUEUE_LOG_LEVEL": "WARNING",
        "ZEROSERVE_PURE_PYTHON": "1" if target == "python" else "0",
        **(peers.checkout_env(checkout) if checkout is not None else {}),
    }
    return [sys.executable, "-O", "-m", "queue_proxy"], env, checkout


def _run(
    ps: harness.Processes,
    upstream: int,
    target: str,
    requests: int,
    args: argparse.Namespace,
) -> dict[str, int]:
    conns, cache, baseline = args.conns, args.cache, args.baseline
    port = harness.free_port()
    out = ps.tmp / f"callgrind.{target}.{requests}.out"
    cmd, env, cwd = _command(target, upstream, port, baseline)
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if cache:
        valgrind += _CACHE_SIM
    proc = subprocess.Popen(
        [*valgrind, *cmd], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        harness.wait_ok(port, within_s=120)
        subprocess.run(
            [
                harness.hey_binary(),
                "-n",
                str(requests),
                "-c",
                str(conns),
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            check=True,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    return _totals(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_instructions")
    p.add_argument("--requests", default="1000,4000", help="the two request counts, N1,N2")
    p.add_argument("--conns", type=int, default=4, help="hey -c (1: every request alone)")
    p.add_argument("--cache", action="store_true", help="also count simulated L1 cache misses")
    p.add_argument(
        "--targets",
        default="compiled,python",
        help=f"comma-separated, of {', '.join(_TARGETS)}",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also count the queue-proxy of another checkout (its modules compiled)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    n1, n2 = (int(x) for x in args.requests.split(","))
    if n2 <= n1:
        p.error(f"--requests {args.requests}: the second count must be larger than the first")
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in _TARGETS]
    if unknown or not targets:
        p.error(f"--targets {args.targets}: each must be one of {', '.join(_TARGETS)}")
    if args.conns < 1:
        p.error(f"--conns {args.conns}: must be at least 1")
    labels = {t: t for t in targets}
    if args.baseline is not None:
        problem = peers.checkout_problem(args.baseline)
        if problem:
            p.error(f"--baseline {problem}")
        targets.append("baseline")
        labels["baseline"] = f"baseline {peers.checkout_label(args.baseline)}"
    for tool in ("valgrind", "callgrind_annotate", harness.hey_binary(), "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            p.error(f"{tool} is not installed")
    if "compiled" in targets and not dataplane.compiled():
        p.error("no compiled dataplane to measure: run `make build`")
    head = "| target | instructions per request | of them in the eval loop |"
    rule = "| --- | --- | --- |"
    if args.cache:
        head += " L1 code misses per request | L1 data misses per request |"
        rule += " --- | --- |"
    print(head)
    print(rule)
    up = harness.free_port()
    with harness.processes() as ps:
        ps.nginx("upstream", port=up)
        harness.wait_ok(up)
        for target in targets:
            a = _run(ps, up, target, n1, args)
            b = _run(ps, up, target, n2, args)
            per = {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in b}
            row = f"| {labels[target]} | {per['Ir']:,.0f} | {per['eval']:,.0f} ({per['eval'] / per['Ir']:.0%}) |"
            if args.cache:
                data = per.get("D1mr", 0.0) + per.get("D1mw", 0.0)
                row += f" {per.get('I1mr', 0.0):,.0f} | {data:,.0f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

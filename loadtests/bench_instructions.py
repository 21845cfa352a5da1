"""Instructions per proxied request of the queue-proxy, counted by callgrind: a measure that the
machine's noise does not move, for comparing two versions of the per-request path.

    .venv/bin/python -m loadtests.bench_instructions [--requests 1000,4000 --conns 4]

For each core (compiled, and the Python source with ``ZEROSERVE_PURE_PYTHON=1``) the
queue-proxy runs under ``valgrind --tool=callgrind`` in front of the nginx upstream of
``bench_hop``, twice: once answering the smaller number of ``--requests``, once the larger
(``hey -n N -c --conns``, keep-alive). The difference of the two totals over the difference of
the request counts is the cost of one request without the start-up and shutdown: user-space
instructions (the kernel's are not counted), with the share of the interpreter's eval loop.
Under callgrind the process runs about 50× slower, so a run takes a minute or two.
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
from loadtests import harness

_EVAL = "_PyEval_EvalFrameDefault"


def _totals(out: Path) -> tuple[int, int]:
    """(all instructions, those in the eval loop's own code) of a callgrind output file."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = evals = 0
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in m.group(2):
            total = n
        elif _EVAL in m.group(2):
            evals += n
    return total, evals


def _run(
    ps: harness.Processes, upstream: int, pure: bool, requests: int, conns: int
) -> tuple[int, int]:
    port = harness.free_port()
    out = ps.tmp / f"callgrind.{int(pure)}.{requests}.out"
    env = {
        **os.environ,
        **harness.queue_proxy_env(upstream, port),
        "QUEUE_LOG_LEVEL": "WARNING",
        "ZEROSERVE_PURE_PYTHON": "1" if pure else "0",
    }
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(
        [*cmd, sys.executable, "-O", "-m", "queue_proxy"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        harness.wait_ok(port, within_s=120)
        subprocess.run(
            ["hey", "-n", str(requests), "-c", str(conns), f"http://127.0.0.1:{port}/"],
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
    p.add_argument("--conns", type=int, default=4, help="hey -c")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    n1, n2 = (int(x) for x in args.requests.split(","))
    if n2 <= n1:
        p.error(f"--requests {args.requests}: the second count must be larger than the first")
    for tool in ("valgrind", "callgrind_annotate", "hey", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            p.error(f"{tool} is not installed")
    if not dataplane.compiled():
        p.error("no compiled dataplane to compare: run `make build`")
    up = harness.free_port()
    print("| core | instructions per request | of them in the eval loop |")
    print("| --- | --- | --- |")
    with harness.processes() as ps:
        ps.nginx("upstream", port=up)
        harness.wait_ok(up)
        for pure in (False, True):
            t1, e1 = _run(ps, up, pure, n1, args.conns)
            t2, e2 = _run(ps, up, pure, n2, args.conns)
            per, ev = (t2 - t1) / (n2 - n1), (e2 - e1) / (n2 - n1)
            name = "python source" if pure else "compiled"
            print(f"| {name} | {per:,.0f} | {ev:,.0f} ({ev / per:.0%}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Request batching measured (issue 22, docs/batching.md): for each model, the highest rate at
which p95 stays under a bound with batching off, static and adaptive, side by side in one run;
and what each adds to p50 at 1 request per second.

    python -m loadtests.bench_batching [--models emulator,sklearn] [--bound-ms 100]

Each model runs three times, each copy with its own queue-proxy (containerConcurrency 1):
batching off, ``static`` and ``adaptive`` (``--max-batch-size``, ``--static-latency``,
``--adaptive-latency``). The models:

* ``emulator``: ``examples.gpu_emulator`` with the batch cost model, one slot (a GPU that runs
  one batch at a time): ``--call-ms`` (20) per call plus ``--row-ms`` (1) per row;
* ``sklearn``: the built-in model server with the iris model (``examples/models``) on CPU;
* ``pytorch``: the built-in model server with an MLP of ``--depth`` layers of ``--hidden``
  units (``examples.make_models.make_pytorch``), on the GPU when torch sees one, else the CPU.

Every request is one row (``{"instances": [[...]]}`` to ``/v1/models/<m>:predict``), sent by
an open-loop client (:func:`loadtests.harness.open_loop`: each timed from its scheduled send).
Rates climb by ``--step`` (×1.25) from ``--start-rate``; at each rate the copies still in the
race take turns (``--seconds`` each), and a copy leaves the race at the first rate whose p95 is
over the bound or where a request failed. Its result is the last rate it passed.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.harness import (
    Processes,
    free_port,
    percentile,
    processes,
    queue_proxy_env,
    run_open_loop,
)

ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "static", "adaptive")


@dataclass
class Copy:
    """One model server behind one queue-proxy."""

    model: str
    mode: str
    port: int
    request: bytes
    passed: float = 0.0  # the highest rate that met the bound
    out: bool = False
    steps: list[dict[str, float]] = field(default_factory=list)
    p50_at_1: float = 0.0


def post(port: int, path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), port, len(body), body)
    )


def wait_answers(port: int, request: bytes, within_s: float = 60.0) -> None:
    """Until the request is answered 200 (queue-proxy and model server up)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 2) as s:
                s.sendall(request)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"port {port} does not answer 200")


def model_server(ps: Processes, model: str, port: int, args: argparse.Namespace) -> None:
    py = sys.executable
    if model == "emulator":
        env = {
            "PORT": str(port),
            "CALL_COST_MS": str(args.call_ms),
            "ROW_COST_MS": str(args.row_ms),
            "SLOTS": "1",
            "STARTUP_DELAY_SECONDS": "0",
        }
        ps.spawn([py, "-m", "examples.gpu_emulator"], env, cwd=ROOT)
    elif model == "sklearn":
        model_dir = str(ROOT / "examples" / "models" / "iris-sklearn")
        cmd = [py, "-m", "modelserver", "--name", "iris", "--format", "sklearn"]
        ps.spawn([*cmd, "--model", model_dir], {"PORT": str(port)}, cwd=ROOT)
    else:
        path = ps.tmp / f"mlp-{args.hidden}x{args.depth}.pt2"
        if not path.exists():
            from examples.make_models import make_pytorch

            made = make_pytorch(ps.tmp, hidden=args.hidden, depth=args.depth, train_steps=0)
            made.rename(path)
        cmd = [py, "-m", "modelserver", "--name", "iris", "--format", "pytorch"]
        ps.spawn([*cmd, "--model", str(path)], {"PORT": str(port)}, cwd=ROOT)


def start(ps: Processes, model: str, mode: str, args: argparse.Namespace) -> Copy:
    user_port, port = free_port(), free_port()
    model_server(ps, model, user_port, args)
    env = {"CONTAINER_CONCURRENCY": "1"}
    if mode != "off":
        latency = args.static_latency if mode == "static" else args.adaptive_latency
        env |= {
            "QUEUE_BATCH_MAX_SIZE": str(args.max_batch_size),
            "QUEUE_BATCH_MAX_LATENCY": latency,
            "QUEUE_BATCH_MODE": mode,
        }
    env = {**queue_proxy_env(user_port, port), "QUEUE_LOG_LEVEL": "WARNING", **env}
    ps.spawn([sys.executable, "-O", "-m", "queue_proxy"], env, cwd=ROOT)
    name = "m" if model == "emulator" else "iris"
    row = [1.0, 2.0, 3.0, 4.0] if model == "emulator" else [6.8, 2.8, 4.8, 1.4]  # (iris: 4)
    request = post(port, f"/v1/models/{name}:predict", json.dumps({"instances": [row]}).encode())
    return Copy(model, mode, port, request)


def step(c: Copy, rate: float, args: argparse.Namespace) -> None:
    bad: list[bytes] = []
    lat = run_open_loop(c.port, rate, args.seconds, bad=bad, conns=args.conns, request=c.request)
    ok = [x for x in lat if x >= 0]
    failed = len(lat) - len(ok)
    p50 = percentile(ok, 50) * 1000 if ok else float("inf")
    p95 = percentile(ok, 95) * 1000 if ok else float("inf")
    c.steps.append({"rate": rate, "p50_ms": p50, "p95_ms": p95, "failed": failed})
    if failed or p95 > args.bound_ms:
        c.out = True
    else:
        c.passed = rate
    print(
        f"  {c.model:8} {c.mode:8} {rate:7.1f}/s  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms"
        f"  failed {failed}" + ("  <- out" if c.out else ""),
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="emulator,sklearn")
    p.add_argument("--bound-ms", type=float, default=100.0, help="p95 bound (ms)")
    p.add_argument("--seconds", type=float, default=4.0, help="per rate and copy")
    p.add_argument("--start-rate", type=float, default=10.0)
    p.add_argument("--step", type=float, default=1.25)
    p.add_argument("--max-rate", type=float, default=3000.0)
    p.add_argument("--conns", type=int, default=256, help="client connections")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--static-latency", default="50ms")
    p.add_argument("--adaptive-latency", default="100ms")
    p.add_argument("--call-ms", type=float, default=20.0, help="emulator: cost of a call")
    p.add_argument("--row-ms", type=float, default=1.0, help="emulator: cost of a row")
    p.add_argument("--hidden", type=int, default=1024, help="pytorch: units per layer")
    p.add_argument("--depth", type=int, default=4, help="pytorch: layers")
    p.add_argument("--idle-seconds", type=float, default=20.0, help="the 1 request/s run")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ("emulator", "sklearn", "pytorch"):
            p.error(f"--models: {m!r} is not emulator, sklearn or pytorch")

    with processes() as ps:
        copies = [start(ps, m, mode, args) for m in models for mode in MODES]
        for c in copies:
            wait_answers(c.port, c.request)
        print(f"1 request/s for {args.idle_seconds:g} s each:", flush=True)
        for c in copies:
            lat = run_open_loop(c.port, 1.0, args.idle_seconds, conns=4, request=c.request)
            c.p50_at_1 = percentile([x for x in lat if x >= 0], 50) * 1000
            print(f"  {c.model:8} {c.mode:8} p50 {c.p50_at_1:.2f} ms", flush=True)
        print(f"rates until p95 > {args.bound_ms:g} ms:", flush=True)
        rate = args.start_rate
        while rate <= args.max_rate and any(not c.out for c in copies):
            for c in copies:
                if not c.out:
                    step(c, rate, args)
            rate = round(rate * args.step, 1)

    print()
    print(
        f"| model | batching | highest rate with p95 ≤ {args.bound_ms:g} ms | vs off | p50 at 1/s | added p50 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    results = []
    for c in copies:
        off = next(o for o in copies if o.model == c.model and o.mode == "off")
        ratio = c.passed / off.passed if off.passed else float("nan")
        added = c.p50_at_1 - off.p50_at_1
        print(
            f"| {c.model} | {c.mode} | {c.passed:g}/s | {ratio:.2f}× | "
            f"{c.p50_at_1:.2f} ms | {added:+.2f} ms |"
        )
        results.append(
            {
                "model": c.model,
                "mode": c.mode,
                "highest_rate": c.passed,
                "vs_off": ratio,
                "p50_at_1_ms": c.p50_at_1,
                "added_p50_ms": added,
                "steps": c.steps,
            }
        )
    if args.out:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

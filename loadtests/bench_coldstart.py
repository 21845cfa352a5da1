"""Cold-start benchmark (issue 6): first request at zero to its response, minus model start.

    .venv/bin/python -m loadtests.bench_coldstart --rounds 10
    .venv/bin/python -m loadtests.bench_coldstart --model bert --rounds 5 [--device cuda]

``--model bert`` (issue 26) measures a real framework model instead, a BERT-base-size PyTorch
encoder served by the built-in model server, with and without the framework zygote:
:mod:`loadtests.coldstart_framework`. What follows is the default, ``--model emulator``.

Starts ``python -m zeroserve up`` with one GPU-emulator service (initial scale 0, window 6 s,
grace 1 s, no emulated model load, 1 ms of work). Each round waits until the revision has no
ready replica (and ``--settle`` seconds more, so the old replica has finished draining), then
sends one ``GET /?sleep=1`` with Host ``gpu.default.example.com`` on a new connection and times
it to the response.

Separately, as many times: the model server's own start-to-ready (spawn
``python -m examples.gpu_emulator`` with the same environment and a PORT, poll
``GET /v2/health/ready`` every 5 ms until 200) and the queue-proxy's own start-to-ready (model
server already up; spawn ``python -m queue_proxy`` with the supervisor's environment, poll
``GET /`` with ``K-Network-Probe: queue`` every 5 ms until 200 ``queue``), both as a new
process (``python -m queue_proxy``, as on Kubernetes) and forked from a warm zygote (as the local
supervisor starts it, :mod:`cluster.local.zygote`). Also the bare interpreter start
(``python -c pass``) and the import of ``queue_proxy.app``.

The overhead is cold start minus model start-to-ready: activator buffering, autoscaler poke,
the supervisor starting both processes, the queue-proxy's start and the probes. Percentiles are
nearest-rank: with 10 rounds p95 is the maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiohttp

from cluster.local.zygote import Zygote
from loadtests import coldstart_framework
from loadtests.harness import free_port, percentile, queue_proxy_env
from tests.e2e_support import ROOT, emulator_spec, wait_for, zeroserve_up

HOST = "gpu.default.example.com"
REVISION = "gpu-v1"
MODEL_ENV = {"STARTUP_DELAY_SECONDS": "0", "SERVICE_TIME_MS": "1", "SLOTS": "1000"}
POLL_S = 0.005
GOAL_MS = 100.0


def spec_text() -> str:
    return emulator_spec(
        config={
            "allow-zero-initial-scale": "true",
            "initial-scale": "0",
            "scale-to-zero-grace-period": "1s",
        },
        annotations={"autoscaling.knative.dev/window": "6s"},
        env=MODEL_ENV,
    )


async def cold_starts(rounds: int, settle_s: float, workdir: Path) -> list[float]:
    """Seconds from the first request at zero to its response, ``rounds`` times."""
    spec = workdir / "coldstart.yaml"
    spec.write_text(spec_text())
    out: list[float] = []
    async with (
        zeroserve_up(spec, workdir / "zeroserve.log") as rt,
        aiohttp.ClientSession() as status,
    ):

        async def at_zero() -> bool:
            row = (await rt.revisions(status)).get(REVISION, {})
            return not row.get("ready") and not row.get("applied")

        async def up() -> bool:
            row = (await rt.revisions(status)).get(REVISION, {})
            return int(row.get("applied") or 0) >= 1

        for i in range(rounds):
            await wait_for(
                at_zero,
                within=120,
                interval=0.2,
                what="scale to zero",
            )
            await asyncio.sleep(settle_s)
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as session:
                t0 = time.perf_counter()
                async with session.get(
                    f"{rt.url}/?sleep=1",
                    headers={"Host": HOST},
                    timeout=aiohttp.ClientTimeout(total=120),
                ) as resp:
                    await resp.read()
                    elapsed = time.perf_counter() - t0
                    if resp.status != 200:
                        raise RuntimeError(f"round {i}: status {resp.status}")
            out.append(elapsed)
            # The autoscaler counts the replica ready a moment later; without this the next round
            # could read the stale "ready: 0" of this one and hit a warm replica.
            await wait_for(up, within=30, interval=0.05, what="the scale applied")
            print(f"  cold start {i + 1}/{rounds}: {elapsed * 1e3:.1f} ms", flush=True)
    return out


@contextlib.asynccontextmanager
async def child(args: Sequence[str], env: Mapping[str, str]) -> AsyncIterator[None]:
    """A child process (this interpreter, cwd at the repository root) stopped with SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def poll_until(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: str | None,
    t0: float,
) -> float:
    """Seconds from ``t0`` until GET ``url`` answers 200 (with ``body`` if given)."""
    deadline = t0 + 30
    timeout = aiohttp.ClientTimeout(total=1.0)
    while time.perf_counter() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, headers=headers, timeout=timeout) as resp:
                text = await resp.text()
                if resp.status == 200 and (body is None or text == body):
                    return time.perf_counter() - t0
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{url} not ready within 30 s")


def qp_env(user_port: int, serving_port: int) -> dict[str, str]:
    """The queue-proxy's environment as ``cluster/local/supervisor.py`` ``_env()`` builds it."""
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": user_port},
        "periodSeconds": 0.0,
        "timeoutSeconds": 1.0,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    return {
        **queue_proxy_env(user_port, serving_port),
        "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "gpu",
        "SERVING_REVISION": REVISION,
        "SERVING_POD": "gpu-v1-bench",
        "SERVING_POD_IP": "127.0.0.1",
        "REVISION_TIMEOUT_SECONDS": "30",
        "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "0",
        "REVISION_IDLE_TIMEOUT_SECONDS": "0",
        "SERVING_READINESS_PROBE": json.dumps(probe),
    }


async def process_starts(rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Start-to-ready (seconds), ``rounds`` each: the model server, the queue-proxy as a new
    process, the queue-proxy forked from a warm zygote."""
    model: list[float] = []
    qp: list[float] = []
    forked: list[float] = []
    probe_headers = {"K-Network-Probe": "queue", "User-Agent": "Knative-Activator-Probe"}
    zygote = Zygote("queue_proxy.app:main", quiet=True)
    await zygote.start()
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            user_port = free_port()
            ready_url = f"http://127.0.0.1:{user_port}/v2/health/ready"
            t0 = time.perf_counter()
            async with child(
                ["-m", "examples.gpu_emulator"], {**MODEL_ENV, "PORT": str(user_port)}
            ):
                model.append(await poll_until(session, ready_url, {}, None, t0))
                serving_port = free_port()
                t1 = time.perf_counter()
                async with child(["-m", "queue_proxy"], qp_env(user_port, serving_port)):
                    url = f"http://127.0.0.1:{serving_port}/"
                    qp.append(await poll_until(session, url, probe_headers, "queue", t1))
                serving_port = free_port()
                t2 = time.perf_counter()
                proc = await zygote.fork(qp_env(user_port, serving_port))
                try:
                    url = f"http://127.0.0.1:{serving_port}/"
                    forked.append(await poll_until(session, url, probe_headers, "queue", t2))
                finally:
                    proc.signal_group(signal.SIGTERM)
                    await asyncio.wait_for(proc.wait(), 15)
    await zygote.close()
    return model, qp, forked


def interpreter_ms(code: str, runs: int) -> float:
    """Median wall milliseconds of ``python -c code`` with this interpreter."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def row(name: str, values_ms: Sequence[float]) -> str:
    p50, p95 = percentile(values_ms, 50), percentile(values_ms, 95)
    return f"| {name} | {p50:.1f} | {p95:.1f} | {max(values_ms):.1f} |"


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        print(f"cold starts ({args.rounds} rounds, ~10 s each to scale to zero)", flush=True)
        cold = [s * 1e3 for s in await cold_starts(args.rounds, args.settle, Path(tmp))]
    print("model server and queue-proxy start-to-ready", flush=True)
    model_s, qp_s, forked_s = await process_starts(args.rounds)
    model = [s * 1e3 for s in model_s]
    qp = [s * 1e3 for s in qp_s]
    forked = [s * 1e3 for s in forked_s]
    overhead = [c - percentile(model, 50) for c in cold]
    bare = interpreter_ms("pass", 5)
    imp = interpreter_ms("import queue_proxy.app", 5)
    imp_model = interpreter_ms("import examples.gpu_emulator", 5)
    print()
    print("| measure (ms) | p50 | p95 | max |")
    print("| --- | --- | --- | --- |")
    print(row("cold start (first request at zero → response)", cold))
    print(row("model server start-to-ready", model))
    print(row("cold start − model start-to-ready (p50)", overhead))
    print(row("queue-proxy start-to-ready, new process (model already up)", qp))
    print(row("queue-proxy start-to-ready, forked from the zygote (model already up)", forked))
    print()
    print(f"python -c pass: {bare:.1f} ms (median of 5)")
    print(f"python -c 'import queue_proxy.app': {imp:.1f} ms ({imp - bare:.1f} ms of imports)")
    print(f"python -c 'import examples.gpu_emulator': {imp_model:.1f} ms")
    print("cold starts (ms):", ", ".join(f"{c:.1f}" for c in cold))
    print("overhead per round (ms):", ", ".join(f"{o:.1f}" for o in overhead))
    p95 = percentile(overhead, 95)
    verdict = "met" if p95 <= GOAL_MS else "NOT met"
    print(f"overhead p95 {p95:.1f} ms against the goal of {GOAL_MS:.0f} ms: {verdict}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model",
        choices=("emulator", "bert"),
        default="emulator",
        help="emulator: the GPU emulator (issue 6); bert: a BERT-size PyTorch model (issue 26)",
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds to wait after ready == 0 so the old replica has drained (default 2)",
    )
    coldstart_framework.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.model == "bert":
        return coldstart_framework.main(args)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""Model formats benchmark (issue 20): load time, warm latency through the proxies, first
prediction from zero, for each format of the built-in model server.

    .venv/bin/python -m loadtests.bench_models [--formats sklearn,xgboost,lightgbm,onnx,pytorch]
        [--starts 3] [--warmup 200] [--requests 2000] [--cold 3] [--out FILE.json]

The models: ``examples/models/`` for sklearn, xgboost and onnx (committed); lightgbm and pytorch
made at run time in a temporary directory by :mod:`examples.make_models` (a ``torch.export`` MLP,
``--pytorch-hidden``/``--pytorch-depth`` set its size). Every artifact is served by a loopback
HTTP server in this process and fetched once into a temporary artifact cache
(``ZEROSERVE_MODEL_CACHE``) before anything is timed: every start below finds it cached.

Per format, in order:

1. **Load**, ``--starts`` times: ``python -m modelserver --name bench --format F --model URI`` as a
   new process, polled (``GET /v2/health/ready`` every 5 ms) from the spawn until it answers 200:
   *start → ready*; and the server's own ``load_s`` (fetch from the cache + load) and ``warmup_s``
   (one inference on zeros) from its ``model loaded`` / ``warm-up done`` log lines.
2. **Warm latency**: ``zeroserve up`` with a spec of two services of the same artifact, each a
   revision with a ``predictor:`` block: ``F`` at min-scale 1 (stays warm) and ``F-cold`` (initial
   scale 0, 6 s window, 1 s grace). One V2 infer of one iris row (``[1, 4]``, the input's name and
   datatype from the model's metadata), sequential on one keep-alive connection per target,
   interleaved request by request (the order alternating): *via* the ingress (activator →
   queue-proxy → model server, Host ``F.default.example.com``) and *direct* to the warm replica's
   own model server, at the port it listens on (its ``PORT``, from the kernel's socket table): the
   same process both ways. ``--warmup`` requests each first, untimed, then ``--requests`` each.
   *Added* = via − direct at the same percentile (nearest rank).
3. **First prediction from zero**, ``--cold`` times: wait until ``F-cold`` has no replica (plus
   ``--settle`` s for the last one's drain), then one V2 infer on a new connection, timed from the
   send to the whole response: the activator holds it, the autoscaler scales 0 → 1, the supervisor
   starts the model server (the artifact comes from the cache) and the queue-proxy. Its
   ``load_s``/``warmup_s`` come from the replica's relayed log lines.

Everything runs on this machine's cores (the model servers, the proxies, the autoscaler and this
client): compare the columns of one run. Bounded: at most ``2 × (warmup + requests)`` warm requests
and ``cold`` cold ones per format, and ``--deadline`` seconds in all (exit 2 when it passes, with
what was measured so far still printed and written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from examples import make_models
from loadtests.harness import free_port, percentile
from modelserver import storage
from tests.e2e_support import ROOT, Runtime, tagged_pids, wait_for, zeroserve_up

FORMATS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch")
COMMITTED = {"sklearn": "iris-sklearn", "xgboost": "iris-xgboost", "onnx": "iris-onnx"}
ROW = [6.8, 2.8, 4.8, 1.4]  # one versicolor
POLL_S = 0.005
_RELAYED = re.compile(r"^(?P<pod>\S+) \| (?P<record>\{.*\})\s*$")


# --- the artifacts -----------------------------------------------------------------------------


def model_files(formats: Sequence[str], workdir: Path, hidden: int, depth: int) -> dict[str, Path]:
    """The model file of each format: the committed example, or one made in ``workdir``."""
    files: dict[str, Path] = {}
    for fmt in formats:
        if fmt in COMMITTED:
            found = [p for p in (make_models.MODELS_DIR / COMMITTED[fmt]).iterdir() if p.is_file()]
            if len(found) != 1:
                raise SystemExit(f"examples/models/{COMMITTED[fmt]}: expected one model file")
            files[fmt] = found[0]
        elif fmt == "lightgbm":
            files[fmt] = make_models.make_lightgbm(workdir)
        else:
            files[fmt] = make_models.make_pytorch(
                workdir, hidden=hidden, depth=depth, train_steps=300 if hidden <= 64 else 0
            )
    return files


@contextlib.asynccontextmanager
async def artifact_server(files: dict[str, Path]) -> AsyncIterator[dict[str, str]]:
    """Serve each file at ``/<format>/<name>`` on loopback; yields each format's URI."""
    paths = {f"/{fmt}/{path.name}": path for fmt, path in files.items()}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = paths.get(request.path)
        if path is None:
            return web.Response(status=404)
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    await web.SockSite(runner, sock).start()
    try:
        yield {fmt: f"{base}/{fmt}/{path.name}" for fmt, path in files.items()}
    finally:
        await runner.cleanup()


# --- 1. load: the model server as a new process ------------------------------------------------


@dataclass
class Start:
    start_to_ready_s: float
    load_s: float
    warmup_s: float


def server_fields(lines: Sequence[str]) -> dict[str, float]:
    """``load_s`` and ``warmup_s`` from a model server's JSON log lines (the last of each)."""
    out: dict[str, float] = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                for key in ("load_s", "warmup_s"):
                    if key in record:
                        out[key] = float(record[key])
    return out


async def standalone_start(fmt: str, uri: str, env: dict[str, str]) -> Start:
    """Spawn ``python -m modelserver`` on ``uri`` and time it from the spawn to ready."""
    port = free_port()
    args = ["-m", "modelserver", "--name", "bench", "--format", fmt, "--model", uri]
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        "--port",
        str(port),
        cwd=ROOT,
        env={**os.environ, **env, "LOG_FORMAT": "json"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession() as session:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"model server exited {proc.returncode}: {''.join(lines)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, timeout=timeout) as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(POLL_S)
        ready_s = time.perf_counter() - t0

        def warmed() -> dict[str, float] | None:
            found = server_fields(lines)
            return found if "warmup_s" in found else None

        fields = await wait_for(
            warmed,
            within=10,
            interval=0.01,
            what="the model server's warm-up line",
        )
        return Start(ready_s, fields["load_s"], fields["warmup_s"])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


# --- 2. warm latency through zeroserve up -------------------------------------------------------


def spec_text(fmt: str, uri: str, cache: Path) -> str:
    """Two services of one artifact: ``fmt`` warm (min-scale 1), ``fmt-cold`` starting at zero."""
    lines = [
        "domain: example.com",
        "config:",
        '  allow-zero-initial-scale: "true"',
        '  scale-to-zero-grace-period: "1s"',
        "services:",
    ]
    for name, scale in (
        (fmt, {"min-scale": "1"}),
        (f"{fmt}-cold", {"initial-scale": "0", "window": "6s"}),
    ):
        lines += [
            f"  - name: {name}",
            "    revisions:",
            f"      - name: {name}-v1",
            "        timeoutSeconds: 300",
            "        annotations:",
            *(f'          autoscaling.knative.dev/{k}: "{v}"' for k, v in scale.items()),
            f"        predictor: {{format: {fmt}, storageUri: '{uri}'}}",
            f"        env: {{ZEROSERVE_MODEL_CACHE: '{cache}'}}",
        ]
    return "\n".join(lines) + "\n"


def model_server_pid(rt: Runtime, name: str) -> int | None:
    """The pid of the runtime's model server serving ``--name name``, if one runs."""
    for pid in tagged_pids(rt.tag):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "modelserver" in argv and "--name" in argv:
            i = argv.index("--name")
            if i + 1 < len(argv) and argv[i + 1] == name:
                return pid
    return None


def listening_port(pid: int) -> int:
    """The TCP port a process listens on: where the supervisor told the model server to listen
    (its ``$PORT``; read from the kernel's socket table, since a model server forked from a
    parked process shows that process's environment in ``/proc/PID/environ``)."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                sockets.add(link[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                    return int(fields[1].rsplit(":", 1)[1], 16)
    raise RuntimeError(f"process {pid} listens on no TCP port")


def relayed_fields(log: str, revision: str) -> list[dict[str, float]]:
    """``load_s``/``warmup_s`` of each replica of ``revision``, in order of its ``warm-up done``
    line, from the runtime's text log (``<pod> | <json line>``)."""
    per_pod: dict[str, dict[str, float]] = {}
    done: list[str] = []
    for line in log.splitlines():
        m = _RELAYED.match(line)
        if m is None or not m["pod"].startswith(f"{revision}-"):
            continue
        fields = server_fields([m["record"]])
        per_pod.setdefault(m["pod"], {}).update(fields)
        if "warmup_s" in fields:
            done.append(m["pod"])
    return [per_pod[pod] for pod in done]


class Client:
    """One keep-alive HTTP/1.1 connection that POSTs the same body and times it."""

    def __init__(self, port: int, host: str | None, path: str, body: bytes) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.path, self.body = path, body
        self.headers = {"Content-Type": "application/json"}
        if host is not None:
            self.headers["Host"] = host

    def post(self) -> tuple[float, bytes]:
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, self.body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{self.path}: {resp.status} {data[:300]!r}")
        return elapsed, data

    def close(self) -> None:
        self.conn.close()


def infer_body(direct_port: int, name: str) -> bytes:
    """A V2 infer of one iris row, with the input's name and datatype from the model's metadata."""
    conn = http.client.HTTPConnection("127.0.0.1", direct_port, timeout=30)
    try:
        conn.request("GET", f"/v2/models/{name}")
        resp = conn.getresponse()
        meta = json.loads(resp.read())
    finally:
        conn.close()
    first = meta["inputs"][0]
    tensor = {"name": first["name"], "datatype": first["datatype"], "shape": [1, 4], "data": ROW}
    return json.dumps({"inputs": [tensor]}).encode()


def interleaved(direct: Client, via: Client, warmup: int, requests: int) -> dict[str, list[float]]:
    """``warmup`` untimed then ``requests`` timed requests to each, alternating which goes first."""
    _, a = direct.post()
    _, b = via.post()
    if json.loads(a)["outputs"] != json.loads(b)["outputs"]:
        raise RuntimeError(f"direct and via answer differently: {a!r} / {b!r}")
    times: dict[str, list[float]] = {"direct": [], "via": []}
    for i in range(warmup + requests):
        pair = (
            (("direct", direct), ("via", via)) if i % 2 == 0 else (("via", via), ("direct", direct))
        )
        for key, client in pair:
            elapsed, _ = client.post()
            if i >= warmup:
                times[key].append(elapsed)
    return times


def latency_summary(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(times["direct"])}
    for key in ("direct", "via"):
        ms = [t * 1e3 for t in times[key]]
        out[f"{key}_ms"] = {
            "p50": round(percentile(ms, 50), 4),
            "p99": round(percentile(ms, 99), 4),
            "mean": round(statistics.fmean(ms), 4),
        }
    out["added_ms"] = {
        q: round(out["via_ms"][q] - out["direct_ms"][q], 4) for q in ("p50", "p99", "mean")
    }
    return out


# --- 3. first prediction from zero --------------------------------------------------------------


async def cold_rounds(
    rt: Runtime, fmt: str, body: bytes, rounds: int, settle_s: float, out: list[dict[str, float]]
) -> None:
    """Time ``rounds`` first predictions from zero, appending each to ``out`` as it is taken."""
    name, revision = f"{fmt}-cold", f"{fmt}-cold-v1"
    async with aiohttp.ClientSession() as status:

        async def row() -> dict[str, Any]:
            return (await rt.revisions(status)).get(revision, {})

        async def at_zero() -> bool:
            r = await row()
            return not r.get("ready") and not r.get("applied") and not model_server_pid(rt, name)

        async def up() -> bool:
            return int((await row()).get("applied") or 0) >= 1

        for i in range(rounds):
            await wait_for(at_zero, within=120, interval=0.2, what=f"{revision} at zero")
            if i:  # the last replica drains after the autoscaler has let it go
                await asyncio.sleep(settle_s)
            seen = len(relayed_fields(rt.log(), revision))
            client = Client(
                int(rt.url.rsplit(":", 1)[1]),
                f"{name}.default.example.com",
                f"/v2/models/{name}/infer",
                body,
            )
            try:
                elapsed, _ = await asyncio.to_thread(client.post)
            finally:
                client.close()
            await wait_for(up, within=30, interval=0.05, what="the scale applied")

            def new_replica(seen: int = seen) -> list[dict[str, float]]:
                return relayed_fields(rt.log(), revision)[seen:]

            fields = await wait_for(
                new_replica,
                within=10,
                interval=0.05,
                what=f"{revision}'s warm-up line",
            )
            out.append({"first_prediction_s": round(elapsed, 4), **fields[0]})
            print(f"    from zero {i + 1}/{rounds}: {elapsed:.3f} s", flush=True)


# --- per format ----------------------------------------------------------------------------------


@dataclass
class Args:
    formats: list[str]
    starts: int
    warmup: int
    requests: int
    cold: int
    settle: float
    deadline: float
    out: Path | None
    pytorch_hidden: int
    pytorch_depth: int
    results: list[dict[str, Any]] = field(default_factory=list)


async def bench_format(args: Args, fmt: str, size: int, uri: str, cache: Path) -> None:
    """Measure one format into a result of ``args.results``, filled in as each phase ends (so a
    deadline still reports what was measured)."""
    result: dict[str, Any] = {"format": fmt, "artifact_bytes": size, "uri": uri}
    args.results.append(result)
    env = {"ZEROSERVE_MODEL_CACHE": str(cache)}
    starts: dict[str, list[float]] = {"start_to_ready_s": [], "load_s": [], "warmup_s": []}
    for i in range(args.starts):
        s = await standalone_start(fmt, uri, env)
        starts["start_to_ready_s"].append(round(s.start_to_ready_s, 4))
        starts["load_s"].append(s.load_s)
        starts["warmup_s"].append(s.warmup_s)
        result["start"] = starts
        print(
            f"    start {i + 1}/{args.starts}: ready {s.start_to_ready_s:.3f} s "
            f"(load_s {s.load_s}, warmup_s {s.warmup_s})",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix=f"bench-models-{fmt}-") as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(spec_text(fmt, uri, cache))
        async with zeroserve_up(spec, Path(tmp) / "zeroserve.log") as rt:
            pid = await wait_for(
                lambda: model_server_pid(rt, fmt), within=60, what=f"{fmt}'s model server"
            )
            async with aiohttp.ClientSession() as status:

                async def warm_ready() -> bool:
                    return await rt.ready(status, f"{fmt}-v1") >= 1

                await wait_for(warm_ready, within=300, interval=0.05, what=f"{fmt}-v1 ready")
            port = listening_port(pid)
            body = infer_body(port, fmt)
            replica = relayed_fields(rt.log(), f"{fmt}-v1")
            direct = Client(port, None, f"/v2/models/{fmt}/infer", body)
            via = Client(
                int(rt.url.rsplit(":", 1)[1]),
                f"{fmt}.default.example.com",
                f"/v2/models/{fmt}/infer",
                body,
            )
            try:
                times = await asyncio.to_thread(
                    interleaved, direct, via, args.warmup, args.requests
                )
            finally:
                direct.close()
                via.close()
            warm = latency_summary(times)
            warm["direct"] = f"the warm replica's model server (pid {pid}), port {port} (listening)"
            warm["replica"] = replica[0] if replica else {}
            result["warm"] = warm
            print(
                f"    warm: direct p50 {warm['direct_ms']['p50']:.3f} ms, via p50 "
                f"{warm['via_ms']['p50']:.3f} ms ({warm['requests']} each)",
                flush=True,
            )
            result["cold"] = []
            await cold_rounds(rt, fmt, body, args.cold, args.settle, result["cold"])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_tables(results: Sequence[dict[str, Any]]) -> None:
    print()
    print(
        "| format | artifact | start → ready s (median / max) | load_s (median) | warmup_s (median) "
        "| first prediction from zero s (median / max) | its load_s / warmup_s (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        st = r.get("start")
        cold = r.get("cold") or []
        size = (
            f"{r['artifact_bytes'] / 1e6:.2f} MB"
            if r["artifact_bytes"] >= 1e6
            else f"{r['artifact_bytes'] / 1e3:.1f} kB"
        )
        cells = [r["format"], size]
        if st:
            cells += [
                f"{median(st['start_to_ready_s']):.3f} / {max(st['start_to_ready_s']):.3f}",
                f"{median(st['load_s']):.3f}",
                f"{median(st['warmup_s']):.4f}",
            ]
        else:
            cells += ["", "", ""]
        if cold:
            ttfp = [c["first_prediction_s"] for c in cold]
            cells += [
                f"{median(ttfp):.3f} / {max(ttfp):.3f}",
                f"{median([c['load_s'] for c in cold]):.3f} / "
                f"{median([c['warmup_s'] for c in cold]):.4f}",
            ]
        else:
            cells += ["", ""]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "| format | requests each | direct p50 / p99 ms | via activator + queue-proxy p50 / p99 ms "
        "| added p50 / p99 ms | via ÷ direct p50 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        w = r.get("warm")
        if not w:
            continue
        d, v, a = w["direct_ms"], w["via_ms"], w["added_ms"]
        print(
            f"| {r['format']} | {w['requests']} | {d['p50']:.3f} / {d['p99']:.3f} "
            f"| {v['p50']:.3f} / {v['p99']:.3f} | {a['p50']:.3f} / {a['p99']:.3f} "
            f"| {v['p50'] / d['p50']:.2f}× |"
        )


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return info


async def run(args: Args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        files = await asyncio.to_thread(
            model_files, args.formats, work / "models", args.pytorch_hidden, args.pytorch_depth
        )
        sizes = {fmt: os.path.getsize(path) for fmt, path in files.items()}  # noqa: ASYNC240 (tiny)
        cache = work / "cache"
        async with artifact_server(files) as uris:
            for fmt in args.formats:  # fetched once: every start below finds it cached
                await asyncio.to_thread(storage.fetch, uris[fmt], cache_dir=cache)
            for fmt in args.formats:
                size = sizes[fmt]
                print(f"{fmt} ({size} bytes)", flush=True)
                await bench_format(args, fmt, size, uris[fmt], cache)


def parse(argv: Sequence[str] | None) -> Args:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench_models",
        description="Per model format: load time, warm latency via the proxies against direct, "
        "and the first prediction from zero (artifact cached).",
    )
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated (default: all)")
    p.add_argument("--starts", type=int, default=3, help="new model-server processes timed (3)")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests per target first")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per target (2000)")
    p.add_argument("--cold", type=int, default=3, help="first predictions from zero timed (3)")
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds after zero replicas before a cold request (the drain; 2)",
    )
    p.add_argument("--deadline", type=float, default=1800.0, help="seconds for the whole run")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument(
        "--pytorch-hidden",
        type=int,
        default=16,
        help="the pytorch MLP's width (16; 4096 with depth 5 is 268 MB)",
    )
    p.add_argument("--pytorch-depth", type=int, default=2, help="its hidden layers (2)")
    ns = p.parse_args(argv)
    formats = [f.strip() for f in ns.formats.split(",") if f.strip()]
    for f in formats:
        if f not in FORMATS:
            p.error(f"--formats {f}: must be among {', '.join(FORMATS)}")
    if not formats:
        p.error("--formats: name at least one")
    if ns.starts < 1 or ns.requests < 1 or ns.cold < 1 or ns.warmup < 0:
        p.error("--starts, --requests and --cold must be at least 1, --warmup at least 0")
    if ns.pytorch_hidden < 1 or ns.pytorch_depth < 1:
        p.error("--pytorch-hidden and --pytorch-depth must be at least 1")
    return Args(
        formats=formats,
        starts=ns.starts,
        warmup=ns.warmup,
        requests=ns.requests,
        cold=ns.cold,
        settle=ns.settle,
        deadline=ns.deadline,
        out=ns.out,
        pytorch_hidden=ns.pytorch_hidden,
        pytorch_depth=ns.pytorch_depth,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    code = 0
    try:
        asyncio.run(asyncio.wait_for(run(args), args.deadline))
    except TimeoutError:
        print(f"deadline of {args.deadline:g} s passed: the results so far", file=sys.stderr)
        code = 2
    print_tables(args.results)
    if args.out is not None:
        report = {
            "machine": machine(),
            "args": {k: v for k, v in vars(args).items() if k not in ("results", "out")},
            "formats": args.results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

"""Headless load-test runner: ``zeroserve up`` + locust + replica sampling → a report folder.

    .venv/bin/python loadtests/run.py --shape step --spec examples/iris.yaml --duration 120
    .venv/bin/python loadtests/run.py --bench all          # the hop benchmarks, same entry point

It runs with the main environment's python (it starts ``.venv/bin/zeroserve``) and starts locust
from ``loadtests/.venv`` (made by ``loadtests/setup.sh``, which it calls first: locust never
enters this process). While the load runs it samples the autoscaler's ``/v1/revisions`` every
second and prints a progress line; afterwards it stops ``zeroserve up`` (SIGTERM, then waits),
writes the report folder (``loadtests/report.py``) and its plot (``loadtests/locust/plot.py``),
and exits 0 only if every SLO gate passed (1: a gate failed; 2: the run itself failed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `loadtests.report` importable
    sys.path.insert(0, str(ROOT))

from loadtests import report  # noqa: E402

LOADTESTS = ROOT / "loadtests"
LOCUST_VENV = LOADTESTS / ".venv"
LOCUSTFILE = LOADTESTS / "locust" / "locustfile.py"
PLOT = LOADTESTS / "locust" / "plot.py"
SHAPES = ("steady", "step", "spike", "diurnal", "trace")

# Which locust users each scenario runs (loadtests/locust/locustfile.py has them).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "model": ("InferV2ByPath", "InferV2ByHost", "PredictV1ByPath", "PredictV1ByHost"),
    "tagged": ("PredictV1Tagged", "PredictV1ByHost"),
    "sleep": ("SleepByHost",),
}

EXIT_PASSED, EXIT_GATE_FAILED, EXIT_RUN_FAILED = 0, 1, 2


class RunError(Exception):
    """The run could not be carried out (the runtime did not start, locust crashed, …)."""


class StopRequestedError(Exception):
    """SIGINT or SIGTERM reached the runner: stop everything, still write what was measured."""


# --- the spec ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What the load is aimed at: one service of the spec, its tags, and the scenario."""

    service: str
    namespace: str
    domain: str
    tags: tuple[str, ...]
    scenario: str
    min_scale: dict[str, int] = field(default_factory=dict)


def target_from_spec(spec_path: Path, service: str | None, scenario: str | None) -> Target:
    """The service to load (the spec's first unless named) and a scenario that fits it.

    The default scenario: ``tagged`` if the service has tagged traffic targets, ``sleep`` if its
    revisions run the emulated GPU model (``examples.gpu_emulator``), else ``model`` (V1 and V2).
    """
    from cluster.spec_loader import load_spec

    spec = load_spec(spec_path)
    if not spec.services:
        raise RunError(f"{spec_path}: no services")
    svc = spec.services[0]
    if service is not None:
        found = [s for s in spec.services if s.name == service]
        if not found:
            names = ", ".join(s.name for s in spec.services)
            raise RunError(f"--service {service}: not in {spec_path} (it has {names})")
        svc = found[0]
    tags = tuple(t.tag for t in svc.traffic if t.tag)
    if scenario is None:
        if tags:
            scenario = "tagged"
        elif any("gpu_emulator" in " ".join(r.command) for r in svc.revisions):
            scenario = "sleep"
        else:
            scenario = "model"
    min_scale: dict[str, int] = {}
    for rev in svc.revisions:
        raw = rev.annotations.get("autoscaling.knative.dev/min-scale")
        raw = raw if raw is not None else spec.config.get("min-scale", "0")
        with contextlib.suppress(ValueError):
            min_scale[f"{rev.namespace}/{rev.name}"] = int(raw)
    return Target(
        service=svc.name,
        namespace=svc.namespace,
        domain=spec.domain,
        tags=tags,
        scenario=scenario,
        min_scale=min_scale,
    )


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def zeroserve_command() -> list[str]:
    exe = Path(sys.executable).parent / "zeroserve"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "zeroserve.cli"]


def stop_process(
    proc: subprocess.Popen[bytes], grace_s: float, *, sig: int = signal.SIGTERM
) -> int:
    """``sig`` to the child's process group, SIGKILL after ``grace_s``; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def start(
    cmd: Sequence[str], log: IO[bytes], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C in the terminal reaches the runner only, which then stops the
    # children in order (zeroserve drains its replicas) instead of everything dying at once.
    return subprocess.Popen(
        list(cmd),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`StopRequestedError` in the main thread for the duration."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise StopRequestedError(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- sampling ----------------------------------------------------------------------------------


def get_json(url: str, timeout_s: float = 1.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Sampler:
    """Samples ``/v1/revisions`` into ``replicas.csv``; times are relative to ``started_at``."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.started_at = time.time()
        self.latest: list[report.ReplicaSample] = []
        self.errors = 0
        self._fh = path.open("w", newline="")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(report.REPLICA_FIELDS)

    def sample(self) -> list[report.ReplicaSample]:
        now = time.time()
        try:
            payload = get_json(self.url)
        except (urllib.error.URLError, OSError, ValueError):
            self.errors += 1
            return self.latest
        self.latest = report.samples_from_status(payload, now=now, started_at=self.started_at)
        for s in self.latest:
            self._writer.writerow(report.replica_row(s))
        self._fh.flush()
        return self.latest

    def close(self) -> None:
        self._fh.close()


class RequestTail:
    """Reads the per-request log as it grows, for the progress line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""
        self.total = 0
        self.failures = 0
        self.recent: list[tuple[float, float, bool]] = []  # (time, latency ms, ok)

    def poll(self, now: float, window_s: float = 2.0) -> None:
        if self.path.exists():
            with self.path.open() as fh:
                fh.seek(self._offset)
                chunk = fh.read()
                self._offset = fh.tell()
            text = self._partial + chunk
            lines = text.split("\n")
            self._partial = lines.pop()
            for row in csv.reader(lines):
                if len(row) < 5 or row[0] == "time":
                    continue
                try:
                    t, rt = float(row[0]), float(row[2])
                except ValueError:
                    continue
                ok = not row[4]
                self.total += 1
                self.failures += 0 if ok else 1
                self.recent.append((t, rt, ok))
        self.recent = [r for r in self.recent if r[0] > now - window_s]

    def line(self, window_s: float = 2.0) -> str:
        lat = sorted(r[1] for r in self.recent)
        p50 = report.percentile(lat, 0.5)
        p99 = report.percentile(lat, 0.99)
        return (
            f"{len(self.recent) / window_s:6.1f} req/s  p50 {_ms(p50):>7} p99 {_ms(p99):>7}  "
            f"total {self.total} errors {self.failures}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def replicas_line(samples: Sequence[report.ReplicaSample]) -> str:
    parts = []
    for s in samples:
        ready = "?" if s.ready is None else str(s.ready)
        panic = " PANIC" if s.panicking else ""
        parts.append(f"{s.revision.split('/')[-1]} {ready}/{max(s.desired, 0)}{panic}")
    return "  ".join(parts) or "(no revisions)"


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything a load run needs, resolved from the command line."""

    shape: str
    spec: Path
    duration_s: float
    out: Path
    target: Target
    users: tuple[str, ...]
    locust_options: tuple[str, ...]
    port: int
    status_port: int
    start_from: str
    settle_timeout_s: float
    cooldown_s: float
    startup_timeout_s: float
    gates: report.Gates
    plot: bool
    setup: bool
    argv: tuple[str, ...]

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/v1/revisions"


def zs_options(args: argparse.Namespace, target: Target, out: Path) -> list[str]:
    opts = [
        f"--zs-service={target.service}",
        f"--zs-namespace={target.namespace}",
        f"--zs-domain={target.domain}",
        f"--zs-tags={','.join(target.tags)}",
        f"--zs-duration={args.duration}",
        f"--zs-rps={args.rps}",
        f"--zs-user-rps={args.user_rps}",
        f"--zs-sleep-ms={args.sleep_ms}",
        f"--zs-steps={args.steps}",
        f"--zs-step-s={args.step_s}",
        f"--zs-spike-start-s={args.spike_start_s}",
        f"--zs-spike-len-s={args.spike_len_s}",
        f"--zs-period-s={args.period_s}",
        f"--zs-min-rps={args.min_rps}",
        f"--zs-trace-speed={args.trace_speed}",
        f"--zs-trace-scale={args.trace_scale}",
        f"--zs-requests-csv={out / report.REQUESTS_CSV}",
    ]
    if args.trace:
        opts.append(f"--zs-trace={Path(args.trace).resolve()}")
    return opts


def wait_until(
    what: str, check: Callable[[], bool], timeout_s: float, *, alive: Callable[[], None]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        alive()
        if time.monotonic() > deadline:
            raise RunError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.2)


def settled(samples: Sequence[report.ReplicaSample], start_from: str) -> bool:
    """Whether the revisions are where the load should start: all at zero, or all at rest."""
    if not samples:
        return False
    if start_from == "zero":
        return all(s.ready == 0 and s.desired <= 0 for s in samples)
    return all(s.desired >= 0 and s.ready == s.desired for s in samples)


def back_to_start(samples: Sequence[report.ReplicaSample], start: dict[str, int | None]) -> bool:
    """Whether every revision is back at (or below) the ready count it had when the load began."""
    return bool(samples) and all(
        s.ready is not None and s.ready <= (start.get(s.revision) or 0) for s in samples
    )


def run_load(plan: Plan, say: Callable[[str], None]) -> int:
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    if plan.setup:
        subprocess.run(["bash", str(LOADTESTS / "setup.sh")], check=True, cwd=ROOT)
    locust_bin = LOCUST_VENV / "bin" / "locust"
    if not locust_bin.exists():
        raise RunError(f"{locust_bin} is missing: run bash loadtests/setup.sh")

    meta: dict[str, Any] = {
        "shape": plan.shape,
        "spec": str(plan.spec.relative_to(ROOT) if plan.spec.is_relative_to(ROOT) else plan.spec),
        "service": plan.target.service,
        "scenario": plan.target.scenario,
        "users": list(plan.users),
        "duration_s": plan.duration_s,
        "command": "python loadtests/run.py " + shlex.join(plan.argv),
        "start_from": plan.start_from,
        "ingress": plan.ingress,
        "status_url": plan.status_url,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    up_cmd = [
        *zeroserve_command(),
        "up",
        str(plan.spec),
        "--port",
        str(plan.port),
        "--status-port",
        str(plan.status_port),
    ]
    say(f"starting: {shlex.join(up_cmd)}  (log: {out / 'zeroserve.log'})")
    zs_log = (out / "zeroserve.log").open("wb")
    locust_log = (out / "locust.log").open("wb")
    zs = start(up_cmd, zs_log)
    locust: subprocess.Popen[bytes] | None = None
    sampler = Sampler(plan.status_url, out / report.REPLICAS_CSV)
    interrupted = ""
    locust_rc: int | None = None
    zs_rc: int | None = None
    try:
        with signals_interrupt():

            def runtime_alive() -> None:
                if zs.poll() is not None:
                    raise RunError(
                        f"zeroserve up exited with {zs.returncode}:\n{tail(out / 'zeroserve.log')}"
                    )

            wait_until(
                "the autoscaler's status",
                lambda: http_ok(plan.status_url),
                plan.startup_timeout_s,
                alive=runtime_alive,
            )
            wait_until(
                "the activator's /healthz",
                lambda: http_ok(plan.ingress + "/healthz"),
                plan.startup_timeout_s,
                alive=runtime_alive,
            )
            if plan.start_from != "now":
                say(
                    f"waiting for the revisions to be {'at zero' if plan.start_from == 'zero' else 'at rest'}"
                )
                deadline = time.monotonic() + plan.settle_timeout_s
                while not settled(sampler.sample(), plan.start_from):
                    runtime_alive()
                    if time.monotonic() > deadline:
                        raise RunError(
                            f"revisions not {plan.start_from} within {plan.settle_timeout_s:.0f} s: "
                            f"{replicas_line(sampler.latest)}"
                        )
                    time.sleep(1.0)
            start_samples = sampler.sample()
            ready_start = {s.revision: s.ready for s in start_samples}

            env = dict(os.environ, ZS_SHAPE=plan.shape)
            locust_cmd = [
                str(locust_bin),
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--host",
                plan.ingress,
                "--csv",
                str(out / report.LOCUST_PREFIX),
                "--csv-full-history",
                "--only-summary",
                # Users finish the request they are in when the shape lowers their number:
                # a request cut off by the load generator is not the server's error.
                "--stop-timeout",
                "30",
                *plan.locust_options,
                *plan.users,
            ]
            (out / "locust_command.txt").write_text(
                f"ZS_SHAPE={plan.shape} {shlex.join(locust_cmd)}\n"
            )
            say(
                f"load: {plan.shape} for {plan.duration_s:.0f} s on {plan.target.service} "
                f"({plan.target.scenario}: {', '.join(plan.users)}) via {plan.ingress}"
            )
            meta["load_started_at"] = time.time()
            locust = start(locust_cmd, locust_log, env)
            requests = RequestTail(out / report.REQUESTS_CSV)
            hard_deadline = time.monotonic() + plan.duration_s + 60.0
            next_tick = time.monotonic()
            while locust.poll() is None:
                runtime_alive()
                if time.monotonic() > hard_deadline:
                    say("locust did not stop by itself: stopping it")
                    stop_process(locust, 10.0, sig=signal.SIGINT)
                    break
                now = time.time()
                samples = sampler.sample()
                requests.poll(now)
                elapsed = now - meta["load_started_at"]
                say(
                    f"[{elapsed:5.0f}/{plan.duration_s:.0f}s] {requests.line()} | "
                    f"ready/desired {replicas_line(samples)}"
                )
                next_tick += 1.0
                time.sleep(max(0.0, next_tick - time.monotonic()))
            locust_rc = locust.wait()
            meta["load_ended_at"] = time.time()
            if locust_rc not in (0, 1):  # 1: some requests failed, which the gates judge
                raise RunError(f"locust exited with {locust_rc}:\n{tail(out / 'locust.log')}")

            if plan.cooldown_s > 0:
                say(f"cool-down: up to {plan.cooldown_s:.0f} s for replicas to fall back")
                deadline = time.monotonic() + plan.cooldown_s
                while not back_to_start(sampler.sample(), ready_start):
                    runtime_alive()
                    if time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
                say(f"after cool-down: ready/desired {replicas_line(sampler.latest)}")
            meta["ready_at_start"] = ready_start
    except StopRequestedError as exc:
        interrupted = str(exc)
        say(f"interrupted by {interrupted}: stopping")
    finally:
        with signals_interrupt():  # a second Ctrl-C must not leave orphans behind
            with contextlib.suppress(StopRequestedError):
                if locust is not None and locust.poll() is None:
                    stop_process(locust, 15.0, sig=signal.SIGINT)
                sampler.close()
                say("stopping zeroserve up")
                zs_rc = stop_process(zs, 45.0)
            zs_log.close()
            locust_log.close()

    meta.setdefault("load_ended_at", time.time())
    meta.update(locust_exit=locust_rc, zeroserve_exit=zs_rc, status_errors=sampler.errors)
    if interrupted:
        meta["interrupted"] = interrupted
    (out / report.META_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    summary = report.build_report(out, plan.gates)
    plot_rc = 0
    if plan.plot:
        plot_rc = subprocess.run(
            [str(LOCUST_VENV / "bin" / "python"), str(PLOT), str(out)], cwd=ROOT, check=False
        ).returncode
        if plot_rc != 0:
            say("the plot failed (see above)")
    say(report.format_summary(summary))
    say(f"report: {out}")
    if interrupted or plot_rc != 0:
        return EXIT_RUN_FAILED
    return EXIT_PASSED if summary["passed"] else EXIT_GATE_FAILED


# --- benchmarks --------------------------------------------------------------------------------


def available_benches() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in LOADTESTS.glob("bench_*.py"))


def run_benches(which: str, extra: Sequence[str], say: Callable[[str], None]) -> int:
    names = available_benches() if which == "all" else [which]
    if not names:
        say("no benchmarks (loadtests/bench_*.py) in this checkout")
        return EXIT_RUN_FAILED
    rc = EXIT_PASSED
    for name in names:
        if not (LOADTESTS / f"bench_{name}.py").exists():
            say(
                f"bench {name}: loadtests/bench_{name}.py is not in this checkout "
                f"(have: {', '.join(available_benches()) or 'none'})"
            )
            rc = EXIT_RUN_FAILED
            continue
        cmd = [sys.executable, "-m", f"loadtests.bench_{name}", *extra]
        say(f"bench {name}: {shlex.join(cmd)}")
        result = subprocess.run(cmd, cwd=ROOT, check=False)
        if result.returncode != 0:
            say(f"bench {name}: exit {result.returncode}")
            rc = EXIT_RUN_FAILED
    return rc


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtests/run.py",
        description="Run a load shape against `zeroserve up SPEC` and write a report folder.",
    )
    p.add_argument("--shape", choices=SHAPES, help="the load shape (omit to run only --bench)")
    p.add_argument("--spec", type=Path, default=ROOT / "examples" / "iris.yaml")
    p.add_argument(
        "--duration", type=float, default=120.0, help="seconds of load (the shape's length)"
    )
    p.add_argument("--rps", type=float, default=20.0, help="peak (or steady) requests per second")
    p.add_argument("--user-rps", type=float, default=2.0, help="requests per second of one user")
    p.add_argument("--service", help="which service of the spec (default: its first)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), help="default: from the spec")
    p.add_argument("--users", help="comma-separated locust user classes (overrides --scenario)")
    p.add_argument("--sleep-ms", type=int, default=100, help="?sleep= of the sleep scenario")
    g = p.add_argument_group("shape parameters (0: derived from --duration)")
    g.add_argument("--steps", type=int, default=3)
    g.add_argument("--step-s", type=float, default=0.0)
    g.add_argument("--spike-start-s", type=float, default=0.0)
    g.add_argument("--spike-len-s", type=float, default=0.0)
    g.add_argument("--period-s", type=float, default=0.0)
    g.add_argument("--min-rps", type=float, default=0.0)
    g.add_argument("--trace", help="CSV of second,rps (the trace shape)")
    g.add_argument("--trace-speed", type=float, default=1.0)
    g.add_argument("--trace-scale", type=float, default=1.0)
    r = p.add_argument_group("runtime and report")
    r.add_argument(
        "--out", type=Path, help="report folder (default: loadtests/results/tmp/<shape>-<time>)"
    )
    r.add_argument("--port", type=int, default=0, help="activator port (default: a free one)")
    r.add_argument(
        "--status-port", type=int, default=0, help="autoscaler status port (default: a free one)"
    )
    r.add_argument(
        "--start-from",
        choices=("settled", "zero", "now"),
        default="settled",
        help="wait before the load until every revision has ready == desired (settled), is at "
        "zero (Knative's load-test starts from zero), or not at all",
    )
    r.add_argument("--settle-timeout", type=float, default=120.0)
    r.add_argument(
        "--cooldown",
        type=float,
        default=0.0,
        help="after the load, sample up to this many seconds until replicas are back where they began",
    )
    r.add_argument("--startup-timeout", type=float, default=60.0)
    r.add_argument("--max-error-rate", type=float, default=0.0, help="gate: failures/requests")
    r.add_argument("--max-p95-ms", type=float, default=None, help="gate: p95 latency in ms")
    r.add_argument("--no-plot", action="store_true")
    r.add_argument("--no-setup", action="store_true", help="do not run loadtests/setup.sh first")
    r.add_argument("--locust-arg", action="append", default=[], help="passed on to locust")
    b = p.add_argument_group("benchmarks")
    b.add_argument(
        "--bench",
        help="run loadtests/bench_NAME.py (hop, activator, …) or all of them; "
        f"present: {', '.join(available_benches()) or 'none'}",
    )
    b.add_argument("--bench-args", default="", help="arguments for the benchmark(s), one string")
    args = p.parse_args(argv)
    if not args.shape and not args.bench:
        p.error("give --shape (a load test) and/or --bench (benchmarks)")
    if args.shape == "trace" and not args.trace:
        args.trace = str(LOADTESTS / "traces" / "example.csv")
    return args


def plan_from_args(args: argparse.Namespace, argv: Sequence[str]) -> Plan:
    spec = args.spec.resolve()
    if not spec.exists():
        raise RunError(f"--spec {args.spec}: no such file")
    target = target_from_spec(spec, args.service, args.scenario)
    users = (
        tuple(u.strip() for u in args.users.split(",") if u.strip())
        if args.users
        else SCENARIOS[target.scenario]
    )
    out = (
        args.out or LOADTESTS / "results" / "tmp" / f"{args.shape}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return Plan(
        shape=args.shape,
        spec=spec,
        duration_s=args.duration,
        out=out.resolve(),
        target=target,
        users=users,
        locust_options=(*zs_options(args, target, out.resolve()), *args.locust_arg),
        port=args.port or free_port(),
        status_port=args.status_port or free_port(),
        start_from=args.start_from,
        settle_timeout_s=args.settle_timeout,
        cooldown_s=args.cooldown,
        startup_timeout_s=args.startup_timeout,
        gates=report.Gates(max_error_rate=args.max_error_rate, max_p95_ms=args.max_p95_ms),
        plot=not args.no_plot,
        setup=not args.no_setup,
        argv=tuple(argv),
    )


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    rc = EXIT_PASSED
    try:
        if args.bench:
            rc = max(rc, run_benches(args.bench, shlex.split(args.bench_args), say))
        if args.shape:
            rc = max(rc, run_load(plan_from_args(args, argv), say))
    except RunError as exc:
        say(f"error: {exc}")
        return EXIT_RUN_FAILED
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the pure decider: 10,000 revisions, each with its four windows, on one core.

    .venv/bin/python -m loadtests.bench_decider [--revisions 10000] [--rounds 20]

Each round is one simulated 2 s autoscaler tick: record one stat per revision into its four
windows (concurrency and RPS, stable 60 s and panic 6 s), then, per revision, average the stable
and panic windows of its metric and call ``scale()``. Reported: the decisions alone (``scale()``
for every revision, goal ≤ 100 ms per 10,000) and the whole tick (record + windows + decision,
goal ≤ 200 ms per 10,000). Loads vary per revision and per round so panic, rate limits and the
scale-down delay all take their paths.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from autoscaler.scaling import DeciderSpec, ScalingState, initial_state, scale
from metrics.windows import LinearBuckets


@dataclass(slots=True)
class Revision:
    """What the autoscaler holds per revision: spec, decider state and the four windows."""

    spec: DeciderSpec
    state: ScalingState
    conc_stable: LinearBuckets = field(default_factory=lambda: LinearBuckets(60.0))
    conc_panic: LinearBuckets = field(default_factory=lambda: LinearBuckets(6.0))
    rps_stable: LinearBuckets = field(default_factory=lambda: LinearBuckets(60.0))
    rps_panic: LinearBuckets = field(default_factory=lambda: LinearBuckets(6.0))
    ready: int = 1


def build(n: int, rng: random.Random, now: float) -> list[Revision]:
    specs = [
        DeciderSpec(),
        DeciderSpec(target_value=7.0, total_value=10.0, scale_down_delay_s=30.0),
        DeciderSpec(scaling_metric="rps", target_value=140.0, total_value=200.0),
        DeciderSpec(target_burst_capacity=-1.0, activation_scale=2),
    ]
    revisions = []
    for i in range(n):
        spec = specs[i % len(specs)]
        ready = rng.randint(0, 20)
        revisions.append(Revision(spec=spec, state=initial_state(spec, ready, now), ready=ready))
    return revisions


def run(n: int, rounds: int, seed: int = 1) -> tuple[list[float], list[float], list[float]]:
    """Returns per-round seconds for: recording, decisions only, the whole tick."""
    rng = random.Random(seed)
    now = 1_700_000_000.0
    revisions = build(n, rng, now)
    record_s: list[float] = []
    decide_s: list[float] = []
    tick_s: list[float] = []
    for _ in range(rounds):
        now += 2.0
        loads = [rng.expovariate(1 / 50.0) if rng.random() < 0.8 else 0.0 for _ in range(n)]

        t0 = time.perf_counter()
        for rev, load in zip(revisions, loads, strict=True):
            rev.conc_stable.record(now, load)
            rev.conc_panic.record(now, load)
            rev.rps_stable.record(now, load * 3)
            rev.rps_panic.record(now, load * 3)
        t1 = time.perf_counter()
        observed = []
        for rev in revisions:
            if rev.spec.scaling_metric == "rps":
                observed.append(
                    (rev.rps_stable.window_average(now), rev.rps_panic.window_average(now))
                )
            else:
                observed.append(
                    (rev.conc_stable.window_average(now), rev.conc_panic.window_average(now))
                )
        t2 = time.perf_counter()
        for rev, (stable, panic) in zip(revisions, observed, strict=True):
            result, rev.state = scale(
                rev.spec, rev.state, ready_pods=rev.ready, stable=stable, panic=panic, now=now
            )
            rev.ready = result.desired_pods  # the pods come up at once in this simulation
        t3 = time.perf_counter()
        record_s.append(t1 - t0)
        decide_s.append(t3 - t2)
        tick_s.append(t3 - t0)
    return record_s, decide_s, tick_s


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--revisions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    n = args.revisions
    record_s, decide_s, tick_s = run(n, args.rounds)
    per = 10_000 / n * 1000  # seconds per n → ms per 10,000

    def line(name: str, xs: list[float]) -> str:
        med = statistics.median(xs)
        return (
            f"{name:<34} median {med * per:7.1f} ms/10k   best {min(xs) * per:7.1f}   "
            f"worst {max(xs) * per:7.1f}   ({n / med:,.0f} /s)"
        )

    print(f"python {sys.version.split()[0]}, {n:,} revisions, {args.rounds} rounds, one core")
    print(line("record (4 windows)", record_s))
    print(line("decisions only (scale)", decide_s))
    print(line("tick (record + windows + scale)", tick_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

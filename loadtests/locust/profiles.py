"""Load profiles: the target request rate at each second of a run, as pure functions.

Stdlib only (no locust), so the main environment's tests can load this file and check each shape
at exact times. ``shapes.py`` turns a profile into locust ``LoadTestShape`` ticks: rate → users,
each user sending at most ``user_rps`` requests per second (locust's ``constant_throughput``).

A profile maps the run time ``t`` (seconds since the load began) to a rate in requests per
second, or to ``None`` once the run is over.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Profile = Callable[[float], float | None]

NAMES = ("steady", "step", "spike", "diurnal", "trace")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileParams:
    """What the shapes are parameterised by. Seconds end in ``_s``; 0 means "derive a default".

    - steady: ``rps`` for the whole ``duration_s``.
    - step: ``steps`` levels ``rps/steps, 2·rps/steps, …, rps`` of ``step_s`` each (Knative's
      stepped load-test: 1k → 2k → 3k RPS, 2 minutes each), then no load until the end, so
      the replicas can be seen to fall back. Default ``step_s``: half the run over the steps.
    - spike: no load until ``spike_start_s`` (default 30 % of the run), ``rps`` at once for
      ``spike_len_s`` (default 20 %), then no load: scale from zero under a burst.
    - diurnal: a sine between ``min_rps`` and ``rps`` with period ``period_s`` (default: the
      run), starting at its trough.
    - trace: ``(second, rps)`` rows of the CSV ``trace``, each held until the next row, with
      time divided by ``trace_speed`` and rates multiplied by ``trace_scale``; it ends one
      (scaled) second after the last row, or at ``duration_s`` if that comes first.
    """

    duration_s: float = 60.0
    rps: float = 10.0
    steps: int = 3
    step_s: float = 0.0
    spike_start_s: float = 0.0
    spike_len_s: float = 0.0
    period_s: float = 0.0
    min_rps: float = 0.0
    trace: str = ""
    trace_speed: float = 1.0
    trace_scale: float = 1.0


def users_for(rps: float, user_rps: float) -> int:
    """Users needed for ``rps`` when each sends ``user_rps``: rounded up, so the target is met."""
    if rps <= 0:
        return 0
    if user_rps <= 0:
        raise ValueError(f"user-rps = {user_rps}: must be > 0")
    # 1e-9 keeps 12/0.4 = 30.000000000000004 at 30 users, not 31.
    return math.ceil(rps / user_rps - 1e-9)


def steady(p: ProfileParams) -> Profile:
    def at(t: float) -> float | None:
        return None if t >= p.duration_s else p.rps

    return at


def step(p: ProfileParams) -> Profile:
    if p.steps < 1:
        raise ValueError(f"steps = {p.steps}: must be ≥ 1")
    step_s = p.step_s or p.duration_s * 0.5 / p.steps

    def at(t: float) -> float | None:
        if t >= p.duration_s:
            return None
        k = int(t // step_s)
        return p.rps * (k + 1) / p.steps if k < p.steps else 0.0

    return at


def spike(p: ProfileParams) -> Profile:
    start = p.spike_start_s or p.duration_s * 0.3
    length = p.spike_len_s or p.duration_s * 0.2

    def at(t: float) -> float | None:
        if t >= p.duration_s:
            return None
        return p.rps if start <= t < start + length else 0.0

    return at


def diurnal(p: ProfileParams) -> Profile:
    period = p.period_s or p.duration_s

    def at(t: float) -> float | None:
        if t >= p.duration_s:
            return None
        # Trough at t=0, crest at period/2: min + (max-min)·(1 − cos 2πt/T)/2.
        return p.min_rps + (p.rps - p.min_rps) * (1.0 - math.cos(2.0 * math.pi * t / period)) / 2.0

    return at


def read_trace(path: str | Path) -> list[tuple[float, float]]:
    """``second,rps`` rows (one header row and ``#`` comments are skipped), sorted by second."""
    points: list[tuple[float, float]] = []
    header_seen = False
    with Path(path).open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            try:
                second, rate = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                if not points and not header_seen:
                    header_seen = True
                    continue  # the header
                raise ValueError(f"{path}:{lineno}: expected 'second,rps', got {row!r}") from None
            if second < 0 or rate < 0:
                raise ValueError(f"{path}:{lineno}: second and rps must be ≥ 0, got {row!r}")
            points.append((second, rate))
    if not points:
        raise ValueError(f"{path}: no (second, rps) rows")
    return sorted(points)


def trace(p: ProfileParams, points: Sequence[tuple[float, float]] | None = None) -> Profile:
    if points is None:
        points = read_trace(p.trace)
    if p.trace_speed <= 0:
        raise ValueError(f"trace-speed = {p.trace_speed}: must be > 0")
    end = min(p.duration_s, (points[-1][0] + 1.0) / p.trace_speed)

    def at(t: float) -> float | None:
        if t >= end:
            return None
        t_trace = t * p.trace_speed
        rate = 0.0
        for second, r in points:
            if second > t_trace:
                break
            rate = r
        return rate * p.trace_scale

    return at


def make_profile(name: str, params: ProfileParams) -> Profile:
    """The profile called ``name`` (one of :data:`NAMES`)."""
    factories: dict[str, Callable[[ProfileParams], Profile]] = {
        "steady": steady,
        "step": step,
        "spike": spike,
        "diurnal": diurnal,
        "trace": trace,
    }
    try:
        return factories[name](params)
    except KeyError:
        raise ValueError(f"shape = {name}: must be one of {', '.join(NAMES)}") from None

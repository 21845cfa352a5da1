"""A load test's report from its raw files: per-second timeline, summary, SLO gates.

This module needs neither locust nor matplotlib: it runs in the main environment (``run.py`` and
the tests import it) and reads what the locust process and the runner wrote into the report folder:

- ``requests.csv``: one row per request, written by the locustfile's request listener
  (``time`` = unix seconds when it completed, ``name``, ``response_time_ms``, ``status``,
  ``error``; an empty ``error`` is a success).
- ``replicas.csv``: the runner's samples of the autoscaler's ``/v1/revisions``, one row per
  revision per second (:data:`REPLICA_FIELDS`).
- ``locust_stats.csv`` and ``locust_stats_history.csv``: locust's own ``--csv`` output; the
  history gives the user count per second, the stats are a cross-check of the totals.

It writes ``timeline.csv`` (one row per second of load: users, requests, failures, p50/p95/p99)
and ``summary.json`` (totals, latency percentiles, replicas per revision, gate verdicts).
``python -m loadtests.report DIR`` rebuilds both from a report folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REQUESTS_CSV = "requests.csv"
REPLICAS_CSV = "replicas.csv"
TIMELINE_CSV = "timeline.csv"
SUMMARY_JSON = "summary.json"
META_JSON = "meta.json"
LOCUST_PREFIX = "locust"

REQUEST_FIELDS = ("time", "name", "response_time_ms", "status", "error")
REPLICA_FIELDS = (
    "time",
    "elapsed_s",
    "revision",
    "desired",
    "ready",
    "panicking",
    "stable_concurrency",
    "panic_concurrency",
)
TIMELINE_FIELDS = (
    "second",
    "users",
    "requests",
    "failures",
    "p50_ms",
    "p95_ms",
    "p99_ms",
)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One completed request as the locust listener saw it."""

    time: float
    name: str
    response_time_ms: float
    status: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One revision's row of ``/v1/revisions`` at one sampling instant.

    ``desired`` is -1 before the autoscaler's first decision; ``ready`` is None when the
    autoscaler could not count ready pods.
    """

    time: float
    elapsed_s: float
    revision: str
    desired: int
    ready: int | None
    panicking: bool
    stable_concurrency: float = 0.0
    panic_concurrency: float = 0.0


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One second of load; latencies are None in a second where no request completed."""

    second: int
    users: int
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RevisionSummary:
    """How one revision's replicas moved during the run."""

    revision: str
    desired_max: int
    ready_start: int | None
    ready_max: int
    ready_end: int | None
    panic_seconds: float
    panic_periods: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gates:
    """SLO gates: the run passes only if every gate passes. ``None`` disables a gate."""

    max_error_rate: float = 0.0
    """Failures / requests, as a fraction (0.001 = 0.1 %)."""
    max_p95_ms: float | None = None
    """The 95th percentile of all requests' latencies, milliseconds."""
    min_requests: int = 1
    """A run that sent fewer requests proves nothing, so it fails."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult:
    name: str
    limit: float
    value: float | None
    passed: bool


# --- reading -----------------------------------------------------------------------------------


def _float_or_none(text: str) -> float | None:
    text = text.strip()
    if not text or text.upper() == "N/A":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_requests(path: Path) -> list[RequestRecord]:
    """``requests.csv`` rows, in file order; a missing file is no requests."""
    if not path.exists():
        return []
    out: list[RequestRecord] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            t = _float_or_none(row.get("time", ""))
            rt = _float_or_none(row.get("response_time_ms", ""))
            if t is None or rt is None:
                continue  # a row cut short by a kill: not a request we can place in time
            out.append(
                RequestRecord(
                    time=t,
                    name=row.get("name", ""),
                    response_time_ms=rt,
                    status=int(_float_or_none(row.get("status", "")) or 0),
                    error=row.get("error") or "",
                )
            )
    return out


def write_requests(path: Path, records: Iterable[RequestRecord]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(REQUEST_FIELDS)
        for r in records:
            writer.writerow(
                [f"{r.time:.6f}", r.name, f"{r.response_time_ms:.3f}", r.status, r.error]
            )


def read_replicas(path: Path) -> list[ReplicaSample]:
    """``replicas.csv`` rows, in file order."""
    if not path.exists():
        return []
    out: list[ReplicaSample] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            ready = _float_or_none(row.get("ready", ""))
            out.append(
                ReplicaSample(
                    time=float(row["time"]),
                    elapsed_s=float(row["elapsed_s"]),
                    revision=row["revision"],
                    desired=int(float(row["desired"])),
                    ready=None if ready is None else int(ready),
                    panicking=row.get("panicking", "").strip().lower() in ("1", "true", "yes"),
                    stable_concurrency=_float_or_none(row.get("stable_concurrency", "")) or 0.0,
                    panic_concurrency=_float_or_none(row.get("panic_concurrency", "")) or 0.0,
                )
            )
    return out


def replica_row(sample: ReplicaSample) -> list[str]:
    return [
        f"{sample.time:.3f}",
        f"{sample.elapsed_s:.3f}",
        sample.revision,
        str(sample.desired),
        "" if sample.ready is None else str(sample.ready),
        "1" if sample.panicking else "0",
        f"{sample.stable_concurrency:.3f}",
        f"{sample.panic_concurrency:.3f}",
    ]


def write_replicas(path: Path, samples: Iterable[ReplicaSample]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(REPLICA_FIELDS)
        writer.writerows(replica_row(s) for s in samples)


def samples_from_status(payload: Any, *, now: float, started_at: float) -> list[ReplicaSample]:
    """``/v1/revisions`` JSON (``{"revisions": [...]}`` or a bare list) as replica samples."""
    rows = payload.get("revisions") if isinstance(payload, Mapping) else payload
    if not isinstance(rows, list):
        return []
    out: list[ReplicaSample] = []
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        name = str(row.get("revision", row.get("name", "")))
        ns = str(row.get("namespace", ""))
        observed = row.get("observed")
        observed = observed if isinstance(observed, Mapping) else row
        ready = row.get("ready")
        out.append(
            ReplicaSample(
                time=now,
                elapsed_s=now - started_at,
                revision=f"{ns}/{name}" if ns else name,
                desired=int(row.get("desired", -1)),
                ready=int(ready) if isinstance(ready, int | float) else None,
                panicking=bool(row.get("panicking", False)),
                stable_concurrency=float(observed.get("stable_concurrency", 0.0) or 0.0),
                panic_concurrency=float(observed.get("panic_concurrency", 0.0) or 0.0),
            )
        )
    return out


def read_users(history_path: Path) -> dict[int, int]:
    """Users per unix second from locust's ``_stats_history.csv`` (its Aggregated rows)."""
    if not history_path.exists():
        return {}
    users: dict[int, int] = {}
    with history_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") != "Aggregated":
                continue
            t = _float_or_none(row.get("Timestamp", ""))
            n = _float_or_none(row.get("User Count", ""))
            if t is not None and n is not None:
                # The most users seen in that second: locust may write a row just before a change.
                users[int(t)] = max(users.get(int(t), 0), int(n))
    return users


def read_locust_totals(stats_path: Path) -> dict[str, float | None]:
    """The Aggregated row of locust's ``_stats.csv`` (its own count, failures, percentiles)."""
    if not stats_path.exists():
        return {}
    with stats_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") == "Aggregated":
                return {
                    "requests": _float_or_none(row.get("Request Count", "")),
                    "failures": _float_or_none(row.get("Failure Count", "")),
                    "p50_ms": _float_or_none(row.get("50%", "")),
                    "p95_ms": _float_or_none(row.get("95%", "")),
                    "p99_ms": _float_or_none(row.get("99%", "")),
                    "max_ms": _float_or_none(row.get("Max Response Time", "")),
                    "rps": _float_or_none(row.get("Requests/s", "")),
                }
    return {}


# --- computing ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 1]) of ascending values; None if there are none.

    Nearest rank, as vegeta and locust report it: p95 of 1..100 is 95, p50 of [1, 2] is 1.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def timeline(
    records: Sequence[RequestRecord],
    users: Mapping[int, int],
    *,
    started_at: float,
    ended_at: float,
) -> list[TimelineRow]:
    """One row per whole second from ``started_at`` to ``ended_at``, by completion time.

    ``users`` is keyed by unix second (locust's history); a second without a locust sample
    carries the last known user count forward.
    """
    n_seconds = max(0, math.ceil(ended_at - started_at))
    latencies: dict[int, list[float]] = defaultdict(list)
    failures: dict[int, int] = defaultdict(int)
    for r in records:
        sec = math.floor(r.time - started_at)
        if sec < 0:
            continue
        n_seconds = max(n_seconds, sec + 1)
        latencies[sec].append(r.response_time_ms)
        if not r.ok:
            failures[sec] += 1
    rows: list[TimelineRow] = []
    last_users = 0
    for sec in range(n_seconds):
        # Locust stamps a history row with the whole second it was written in: the row stamped
        # with the second in which this one ends saw its users; else the one it starts in.
        end_key, start_key = math.floor(started_at + sec + 1), math.floor(started_at + sec)
        last_users = users.get(end_key, users.get(start_key, last_users))
        lat = sorted(latencies.get(sec, []))
        rows.append(
            TimelineRow(
                second=sec,
                users=last_users,
                requests=len(lat),
                failures=failures.get(sec, 0),
                p50_ms=percentile(lat, 0.50),
                p95_ms=percentile(lat, 0.95),
                p99_ms=percentile(lat, 0.99),
            )
        )
    return rows


def summarize_revisions(
    samples: Sequence[ReplicaSample], *, interval_s: float = 1.0, load_start_s: float = 0.0
) -> dict[str, RevisionSummary]:
    """Per revision: most desired and ready replicas, ready when load began and at the end, panics.

    ``ready_start`` is the last sample at or before ``load_start_s`` (elapsed seconds), or the
    first sample if none is earlier. A panic period runs from its first panicking sample to one
    interval after its last.
    """
    by_rev: dict[str, list[ReplicaSample]] = defaultdict(list)
    for s in samples:
        by_rev[s.revision].append(s)
    out: dict[str, RevisionSummary] = {}
    for rev, rows in sorted(by_rev.items()):
        rows.sort(key=lambda s: s.elapsed_s)
        before = [s for s in rows if s.elapsed_s <= load_start_s]
        start = before[-1] if before else rows[0]
        periods: list[tuple[float, float]] = []
        open_at: float | None = None
        last_panic = 0.0
        for s in rows:
            if s.panicking:
                if open_at is None:
                    open_at = s.elapsed_s
                last_panic = s.elapsed_s
            elif open_at is not None:
                periods.append((open_at, last_panic + interval_s))
                open_at = None
        if open_at is not None:
            periods.append((open_at, last_panic + interval_s))
        readies = [s.ready for s in rows if s.ready is not None]
        out[rev] = RevisionSummary(
            revision=rev,
            desired_max=max(s.desired for s in rows),
            ready_start=start.ready,
            ready_max=max(readies, default=0),
            ready_end=rows[-1].ready,
            panic_seconds=round(sum(b - a for a, b in periods), 3),
            panic_periods=periods,
        )
    return out


def evaluate_gates(
    gates: Gates, *, requests: int, error_rate: float | None, p95_ms: float | None
) -> list[GateResult]:
    """Each enabled gate's verdict. A latency gate with no latency to judge fails."""
    results = [
        GateResult(
            name="min_requests",
            limit=gates.min_requests,
            value=requests,
            passed=requests >= gates.min_requests,
        ),
        GateResult(
            name="max_error_rate",
            limit=gates.max_error_rate,
            value=error_rate,
            passed=error_rate is not None and error_rate <= gates.max_error_rate,
        ),
    ]
    if gates.max_p95_ms is not None:
        results.append(
            GateResult(
                name="max_p95_ms",
                limit=gates.max_p95_ms,
                value=p95_ms,
                passed=p95_ms is not None and p95_ms <= gates.max_p95_ms,
            )
        )
    return results


def summarize(
    records: Sequence[RequestRecord],
    samples: Sequence[ReplicaSample],
    rows: Sequence[TimelineRow],
    gates: Gates,
    *,
    locust_totals: Mapping[str, float | None] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` document."""
    lat = sorted(r.response_time_ms for r in records)
    n = len(records)
    n_fail = sum(1 for r in records if not r.ok)
    error_rate = n_fail / n if n else None
    p95 = percentile(lat, 0.95)
    errors: dict[str, int] = defaultdict(int)
    by_name: dict[str, int] = defaultdict(int)
    for r in records:
        by_name[r.name] += 1
        if not r.ok:
            errors[r.error] += 1
    revisions = summarize_revisions(samples)
    verdicts = evaluate_gates(gates, requests=n, error_rate=error_rate, p95_ms=p95)
    loaded = [row for row in rows if row.requests]
    return {
        "meta": dict(meta or {}),
        "requests": n,
        "failures": n_fail,
        "error_rate": error_rate,
        "latency_ms": {
            "p50": percentile(lat, 0.50),
            "p95": p95,
            "p99": percentile(lat, 0.99),
            "max": lat[-1] if lat else None,
            "mean": round(sum(lat) / n, 3) if n else None,
        },
        "rps": {
            "max": max((row.requests for row in rows), default=0),
            "mean_while_loaded": round(sum(r.requests for r in loaded) / len(loaded), 3)
            if loaded
            else 0.0,
        },
        "max_users": max((row.users for row in rows), default=0),
        "duration_s": len(rows),
        "by_name": dict(sorted(by_name.items())),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "replicas": {
            "desired_max": max((r.desired_max for r in revisions.values()), default=0),
            "ready_max": max((r.ready_max for r in revisions.values()), default=0),
            "panic_seconds": max((r.panic_seconds for r in revisions.values()), default=0.0),
            "revisions": {
                name: {**asdict(r), "panic_periods": [list(p) for p in r.panic_periods]}
                for name, r in revisions.items()
            },
        },
        "locust": dict(locust_totals or {}),
        "gates": [asdict(v) for v in verdicts],
        "passed": all(v.passed for v in verdicts),
    }


# --- the folder --------------------------------------------------------------------------------


def write_timeline(path: Path, rows: Iterable[TimelineRow]) -> None:
    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(TIMELINE_FIELDS)
        for r in rows:
            writer.writerow(
                [
                    r.second,
                    r.users,
                    r.requests,
                    r.failures,
                    cell(r.p50_ms),
                    cell(r.p95_ms),
                    cell(r.p99_ms),
                ]
            )


def build_report(folder: Path, gates: Gates) -> dict[str, Any]:
    """Read the raw files in ``folder``, write ``timeline.csv`` and ``summary.json``, return the summary.

    ``meta.json`` (written by the runner) gives ``load_started_at`` and ``load_ended_at`` in
    unix seconds; without it, the first and last request bound the run.
    """
    meta: dict[str, Any] = {}
    if (folder / META_JSON).exists():
        meta = json.loads((folder / META_JSON).read_text())
    records = read_requests(folder / REQUESTS_CSV)
    samples = read_replicas(folder / REPLICAS_CSV)
    started = meta.get("load_started_at")
    ended = meta.get("load_ended_at")
    if started is None:
        first = [r.time - r.response_time_ms / 1000.0 for r in records] or [s.time for s in samples]
        started = min(first, default=0.0)
    if ended is None:
        ended = max((r.time for r in records), default=started)
    # Sample times relative to the start of the load (the runner sampled before it, too).
    samples = [replace(s, elapsed_s=round(s.time - float(started), 3)) for s in samples]
    write_replicas(folder / REPLICAS_CSV, samples)
    users = read_users(folder / f"{LOCUST_PREFIX}_stats_history.csv")
    rows = timeline(records, users, started_at=float(started), ended_at=float(ended))
    summary = summarize(
        records,
        samples,
        rows,
        gates,
        locust_totals=read_locust_totals(folder / f"{LOCUST_PREFIX}_stats.csv"),
        meta=meta,
    )
    write_timeline(folder / TIMELINE_CSV, rows)
    (folder / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few human lines: totals, latency, replicas, and each gate's verdict."""
    lat = summary["latency_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    rate = summary["error_rate"]
    lines = [
        f"requests {summary['requests']}  failures {summary['failures']}  "
        f"error rate {'-' if rate is None else f'{rate:.4%}'}  "
        f"peak {summary['rps']['max']} req/s  peak users {summary['max_users']}",
        f"latency p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}  "
        f"max {ms(lat['max'])}",
    ]
    for name, rev in summary["replicas"]["revisions"].items():
        lines.append(
            f"{name}: ready {rev['ready_start']} → max {rev['ready_max']} → {rev['ready_end']}  "
            f"(desired max {rev['desired_max']}, panic {rev['panic_seconds']:.0f} s)"
        )
    for gate in summary["gates"]:
        verdict = "PASS" if gate["passed"] else "FAIL"
        lines.append(
            f"gate {gate['name']}: {verdict} (value {gate['value']}, limit {gate['limit']})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--max-error-rate", type=float, default=0.0)
    parser.add_argument("--max-p95-ms", type=float, default=None)
    args = parser.parse_args(argv)
    summary = build_report(
        args.folder, Gates(max_error_rate=args.max_error_rate, max_p95_ms=args.max_p95_ms)
    )
    print(format_summary(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Draw a load test's report folder as one PNG: load, latency and replicas over time.

Runs with the load-test environment's python (matplotlib lives there, not in the main .venv)::

    loadtests/.venv/bin/python loadtests/locust/plot.py REPORT_DIR [--out REPORT_DIR/plot.png]

It reads ``timeline.csv``, ``replicas.csv`` and ``summary.json`` as ``loadtests/report.py``
wrote them. Time is seconds since the load began (samples before it, while the runner waited
for the service to settle, are negative). Panic periods are shaded in every panel.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen


def _num(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def read_timeline(path: Path) -> dict[str, list]:
    cols: dict[str, list] = defaultdict(list)
    if not path.exists():
        return cols
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                cols[key].append(_num(value))
    return cols


def read_replicas(path: Path) -> dict[str, dict[str, list]]:
    by_rev: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    if not path.exists():
        return by_rev
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            rev = by_rev[row["revision"]]
            rev["t"].append(float(row["elapsed_s"]))
            desired = int(float(row["desired"]))
            rev["desired"].append(desired if desired >= 0 else None)
            rev["ready"].append(_num(row["ready"]))
            rev["panicking"].append(row["panicking"] in ("1", "true", "True"))
    return by_rev


def rolling_mean(values: list, width: int) -> list:
    """Mean of the last ``width`` values at each point (fewer at the start): per-second counts
    of constant-throughput users alternate (2, 3, 2, 3 for 2.5 req/s each), the mean does not."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1) : i + 1] if v is not None]
        out.append(sum(window) / len(window) if window else None)
    return out


def panic_periods(summary: dict) -> list[tuple[float, float]]:
    periods: list[tuple[float, float]] = []
    for rev in summary.get("replicas", {}).get("revisions", {}).values():
        periods.extend(tuple(p) for p in rev.get("panic_periods", []))
    return periods


def plot(folder: Path, out: Path) -> None:
    timeline = read_timeline(folder / "timeline.csv")
    replicas = read_replicas(folder / "replicas.csv")
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    meta = summary.get("meta", {})

    fig, (ax_load, ax_lat, ax_rep) = plt.subplots(
        3, 1, figsize=(11, 9), sharex=True, gridspec_kw={"height_ratios": [1, 1, 1]}
    )
    t = [s + 0.5 for s in timeline.get("second", [])]  # a second's values at its middle

    # 1. Load: completed requests per second, failures per second, users.
    completed = timeline.get("requests", [])
    ax_load.plot(t, completed, color="tab:blue", alpha=0.3, lw=1, label="requests/s (each second)")
    ax_load.plot(t, rolling_mean(completed, 3), color="tab:blue", label="requests/s (3 s mean)")
    ax_load.plot(t, timeline.get("failures", []), color="tab:red", label="errors/s")
    ax_users = ax_load.twinx()
    ax_users.step(
        t, timeline.get("users", []), where="mid", color="tab:gray", ls="--", label="users"
    )
    ax_users.set_ylabel("users")
    ax_load.set_ylabel("requests/s")
    handles = ax_load.get_legend_handles_labels()
    uh = ax_users.get_legend_handles_labels()
    ax_load.legend(handles[0] + uh[0], handles[1] + uh[1], loc="upper right", fontsize=8)
    ax_load.set_ylim(bottom=0)
    ax_users.set_ylim(bottom=0)

    # 2. Latency of the requests that completed in each second.
    for key, color, label in (
        ("p50_ms", "tab:green", "p50"),
        ("p95_ms", "tab:orange", "p95"),
        ("p99_ms", "tab:purple", "p99"),
    ):
        ax_lat.plot(t, timeline.get(key, []), color=color, label=label, marker=".", ms=3)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper right", fontsize=8)

    # 3. Replicas: desired (dashed) and ready (solid) per revision, as step functions.
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (rev, cols) in enumerate(sorted(replicas.items())):
        color = colors[i % len(colors)]
        ax_rep.step(
            cols["t"],
            cols["desired"],
            where="post",
            color=color,
            ls="--",
            alpha=0.8,
            label=f"{rev} desired",
        )
        ax_rep.step(cols["t"], cols["ready"], where="post", color=color, lw=2, label=f"{rev} ready")
    ax_rep.set_ylabel("replicas")
    ax_rep.set_xlabel("seconds since the load began")
    ax_rep.set_ylim(bottom=0)
    ax_rep.yaxis.get_major_locator().set_params(integer=True)
    if replicas:
        ax_rep.legend(loc="upper right", fontsize=8)

    first = True
    for start, end in panic_periods(summary):
        for ax in (ax_load, ax_lat, ax_rep):
            ax.axvspan(
                start,
                end,
                color="tab:red",
                alpha=0.12,
                lw=0,
                label="panic" if first and ax is ax_rep else None,
            )
        first = False
    if not first:
        ax_rep.legend(loc="upper right", fontsize=8)
    for ax in (ax_load, ax_lat, ax_rep):
        ax.axvline(0, color="black", lw=0.6, alpha=0.5)
        ax.grid(alpha=0.3)

    lat = summary.get("latency_ms", {})
    title = (
        f"{meta.get('shape', '?')} load on {meta.get('spec', '?')}: "
        f"{summary.get('requests', 0)} requests, {summary.get('failures', 0)} errors, "
        f"p50 {_fmt(lat.get('p50'))} / p95 {_fmt(lat.get('p95'))} / p99 {_fmt(lat.get('p99'))} ms"
    )
    verdict = "PASS" if summary.get("passed") else "FAIL"
    fig.suptitle(f"{title}  [{verdict}]", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    plot(args.folder, args.out or args.folder / "plot.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

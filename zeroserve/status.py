"""``zeroserve status``: a table of revisions from the autoscaler's ``/v1/revisions``, and one of
each revision's last cold start by phase."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = (
    ("REVISION", "revision"),
    ("DESIRED", "desired"),
    ("READY", "ready"),
    ("PANIC", "panicking"),
    ("CONCURRENCY", "stable_concurrency"),
    ("PANIC-CONC", "panic_concurrency"),
    ("RPS", "stable_rps"),
    ("TARGET", "target"),
    ("LAST CHANGE", "last_change"),
    ("NOT READY BECAUSE", "not_ready_reason"),
)


class StatusError(Exception):
    """The autoscaler could not be reached or answered something else than expected."""


def fetch(url: str, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """GET ``url`` (``…/v1/revisions``) and return its list of revision rows."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"cannot reach the autoscaler at {url}: {exc}") from exc
    except ValueError as exc:
        raise StatusError(f"{url} did not answer JSON: {exc}") from exc
    rows = data.get("revisions") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise StatusError(f"{url} answered JSON without a list of revisions")
    return [r for r in rows if isinstance(r, dict)]


def _cell(row: Mapping[str, Any], key: str) -> str:
    if key == "revision":
        ns, name = row.get("namespace", ""), row.get("revision", row.get("name", ""))
        return f"{ns}/{name}" if ns else str(name)
    if key == "last_change":
        change = row.get("last_change") or row.get("last_scale_change")
        if not isinstance(change, dict):
            return "-"
        return f"{change.get('from', '?')}→{change.get('to', '?')} ({change.get('reason', '?')})"
    value = row.get(key)
    if value is None and isinstance(row.get("observed"), dict):
        value = row["observed"].get(key)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table, one line per revision, sorted by name."""
    table = [[title for title, _ in COLUMNS]]
    ordered = sorted(rows, key=lambda r: (str(r.get("namespace", "")), str(r.get("revision", ""))))
    table += [[_cell(row, key) for _, key in COLUMNS] for row in ordered]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    if not rows:
        lines.append("(no revisions)")
    return "\n".join(line.rstrip() for line in lines)


# The order a cold start's phases run in (cluster.local.coldstart.PHASES), as column titles.
PHASE_COLUMNS = (
    ("SPAWN", "spawn"),
    ("IMPORTS", "imports"),
    ("ACCEL-INIT", "accelerator_init"),
    ("FETCH", "fetch"),
    ("LOAD", "load"),
    ("WARMUP", "warmup"),
    ("READY", "ready"),
)


def render_cold_starts(rows: Sequence[Mapping[str, Any]]) -> str:
    """Each revision's last cold start, one line per revision with a ``last_cold_start``: its
    pod, when it was decided, its total and each phase's seconds (``-``: the phase did not
    apply, e.g. no accelerator, or a command server that reports no phases). Empty when no
    revision has one."""
    starts = [
        (row, row["last_cold_start"])
        for row in sorted(
            rows, key=lambda r: (str(r.get("namespace", "")), str(r.get("revision", "")))
        )
        if isinstance(row.get("last_cold_start"), dict)
    ]
    if not starts:
        return ""
    titles = ["LAST COLD START", "POD", "STARTED", "TOTAL"] + [t for t, _ in PHASE_COLUMNS]
    table = [titles]
    for row, cold in starts:
        phases = cold.get("phases") if isinstance(cold.get("phases"), dict) else {}
        started = cold.get("started_at")
        table.append(
            [
                _cell(row, "revision"),
                str(cold.get("pod", "-")),
                time.strftime("%H:%M:%S", time.localtime(started))
                if isinstance(started, int | float)
                else "-",
                _secs(cold.get("total_s")),
                *(_secs(phases.get(key)) for _, key in PHASE_COLUMNS),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(titles))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _secs(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"

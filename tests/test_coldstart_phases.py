"""Where a cold start goes (issue 26): the model server times and reports its own phases, and the
local supervisor's side (:mod:`cluster.local.coldstart`) combines them with its own."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cluster.local.coldstart import Report, ReportedPhase, StartTimer, combine, parse_report
from tests.examples_support import ROOT, free_port, poll_until_status
from zeroserve.status import render_cold_starts

START_TIMEOUT_S = 30.0
MODEL_PHASES = ["imports", "fetch", "load", "warmup"]  # on the CPU: no accelerator_init


def _save_iris(path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    joblib = importlib.import_module("joblib")  # (by name: joblib's types depend on the extras)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), path)


def _records(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.e2e
async def test_model_server_reports_its_phases_in_order_within_its_wall_time(
    tmp_path: Path,
) -> None:
    """A real ``python -m modelserver`` serving a file:// model: ``/zeroserve/phases`` lists
    imports, fetch, load, warm-up in that order, each non-negative, ending one after the other,
    summing to no more than the time from spawning it to seeing it ready; each phase is also one
    ``cold-start phase`` log line."""
    model = tmp_path / "model.joblib"
    _save_iris(model)
    port = free_port()
    log_path = tmp_path / "modelserver.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "ZEROSERVE_MODEL_CACHE": str(tmp_path / "cache"),
    }
    args = ["--name", "iris", "--format", "sklearn", "--model", model.as_uri()]
    base = f"http://127.0.0.1:{port}"
    spawned = time.monotonic()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modelserver", *args, cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        async with aiohttp.ClientSession() as session:
            await poll_until_status(
                session, f"{base}/v2/health/ready", 200, timeout_s=START_TIMEOUT_S, what="ready"
            )
            wall_s = time.monotonic() - spawned
            async with session.get(f"{base}/zeroserve/phases") as resp:
                assert resp.status == 200, await resp.text()
                report = await resp.json()
    finally:
        proc.kill()
        await proc.wait()

    assert report["done"] is True
    phases = report["phases"]
    assert [p["phase"] for p in phases] == MODEL_PHASES, phases
    assert all(p["seconds"] >= 0 for p in phases), phases
    ends = [p["since_start_s"] for p in phases]
    assert ends == sorted(ends), phases
    assert sum(p["seconds"] for p in phases) <= ends[-1] + 1e-3 <= wall_s + 0.02, (phases, wall_s)
    assert phases[0]["seconds"] > 0  # the interpreter's start and the imports take time
    assert abs(report["started_at"] - time.time()) < 120

    logged = [r for r in _records(log_path) if r.get("msg") == "cold-start phase"]
    assert [r["phase"] for r in logged] == MODEL_PHASES
    assert all(r["seconds"] >= 0 and "since_start_s" in r for r in logged)


# -- the supervisor's side: combining the phases (pure) -------------------------------------------


def _report(start: float | None, *phases: tuple[str, float, float]) -> Report:
    return Report(start, tuple(ReportedPhase(*p) for p in phases))


MODEL = (("imports", 0.9, 0.9), ("fetch", 0.01, 0.91), ("load", 0.05, 0.96), ("warmup", 0.02, 0.98))


@pytest.mark.parametrize(
    ("timer", "ready_at", "report", "total", "phases"),
    [
        pytest.param(
            StartTimer(100.0, 100.0, 100.005),
            101.0,
            _report(100.004, *MODEL),
            1.0,
            {
                "spawn": 0.004,
                "imports": 0.9,
                "fetch": 0.01,
                "load": 0.05,
                "warmup": 0.02,
                "ready": 0.016,
            },
            id="built-in-server-from-its-own-start",
        ),
        pytest.param(
            StartTimer(100.0, 100.5, 100.504),
            101.5,
            _report(100.504, *MODEL),
            1.5,
            {
                "spawn": 0.004,
                "imports": 0.9,
                "fetch": 0.51,
                "load": 0.05,
                "warmup": 0.02,
                "ready": 0.016,
            },
            id="artifact-wait-goes-to-fetch",
        ),
        pytest.param(
            StartTimer(100.0, 100.5, 100.52),
            102.0,
            None,
            2.0,
            {"spawn": 0.52, "ready": 1.48},
            id="command-server-spawn-and-ready-only",
        ),
        pytest.param(
            StartTimer(100.0, None, 100.01),
            100.5,
            _report(None, ("imports", 0.1, 0.1), ("load", 0.2, 0.3)),
            0.5,
            {"spawn": 0.01, "imports": 0.1, "load": 0.2, "ready": 0.19},
            id="no-start-reported-uses-the-spawn-mark",
        ),
        pytest.param(
            StartTimer(100.0, None, 100.01),
            100.5,
            _report(99.0, ("imports", 1.02, 1.02), ("load", 0.3, 1.32), ("warmup", 0.1, 1.42)),
            0.5,
            {"spawn": 0.0, "imports": 0.02, "load": 0.3, "warmup": 0.1, "ready": 0.08},
            id="a-process-older-than-the-decision-counts-from-the-decision",
        ),
        pytest.param(
            StartTimer(100.0, None, 100.01),
            100.5,
            _report(5000.0, ("imports", 0.1, 0.1), ("load", 0.2, 0.3)),  # after ready
            0.5,
            {"spawn": 0.01, "imports": 0.1, "load": 0.2, "ready": 0.19},
            id="a-start-on-another-clock-is-ignored",
        ),
    ],
)
def test_combine(
    timer: StartTimer,
    ready_at: float,
    report: Report | None,
    total: float,
    phases: dict[str, float],
) -> None:
    got_total, got = combine(timer, ready_at, report)
    assert got_total == pytest.approx(total)
    assert [name for name, _ in got] == list(phases)
    assert dict(got) == pytest.approx(phases)
    assert sum(s for _, s in got) == pytest.approx(total, abs=0.05)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {
                "started_monotonic": 5.5,
                "done": True,
                "phases": [{"phase": "imports", "seconds": 0.5, "since_start_s": 0.5}],
            },
            _report(5.5, ("imports", 0.5, 0.5)),
            id="built-in-server",
        ),
        pytest.param({"phases": []}, _report(None), id="nothing-yet"),
        pytest.param({"status": "alive"}, None, id="another-server's-json"),
        pytest.param([1, 2], None, id="not-an-object"),
        pytest.param(
            {"phases": [{"phase": "ready", "seconds": 1, "since_start_s": 1}]},
            None,
            id="the-supervisor's-own-phase-refused",
        ),
        pytest.param(
            {"phases": [{"phase": "load", "seconds": -1, "since_start_s": 1}]},
            None,
            id="negative-seconds-refused",
        ),
    ],
)
def test_parse_report(body: object, expected: Report | None) -> None:
    assert parse_report(body) == expected


def test_status_renders_the_last_cold_start_per_revision() -> None:
    rows: list[dict[str, Any]] = [
        {"namespace": "default", "revision": "b-v1", "last_cold_start": None},
        {
            "namespace": "default",
            "revision": "a-v1",
            "last_cold_start": {
                "pod": "a-v1-3",
                "started_at": 0.0,
                "total_s": 1.25,
                "phases": {"spawn": 0.004, "imports": 0.9, "ready": 0.016},
            },
        },
    ]
    lines = render_cold_starts(rows).splitlines()
    assert lines[0].split()[:5] == ["LAST", "COLD", "START", "POD", "STARTED"]
    assert len(lines) == 2  # b-v1 has had no cold start
    cells = lines[1].split()
    assert cells[0:2] == ["default/a-v1", "a-v1-3"]
    assert cells[3:] == ["1.25s", "4ms", "900ms", "-", "-", "-", "-", "16ms"]
    assert render_cold_starts(rows[:1]) == ""

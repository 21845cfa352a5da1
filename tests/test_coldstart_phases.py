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

from tests.examples_support import ROOT, free_port, poll_until_status

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

"""The load-test smoke run: the step shape through ``zeroserve up``, end to end, in under a minute.

``loadtests/run.py --shape step`` on ``loadtests/specs/smoke-step.yaml`` (the emulated GPU model,
CC 1, 6 s stable window, 2 s scale-to-zero grace): it waits for the revision to reach zero (as
Knative's load-test does), steps 5 → 10 → 15 req/s of 100 ms requests for 8 s each, then sends
nothing for the rest of the 45 s, and samples replicas for up to 30 s more until they are back at
zero. The report must show zero errors, replicas that rose to at least two, and fell back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from loadtests import report

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "loadtests" / "specs" / "smoke-step.yaml"


def _running_the_spec() -> dict[int, str]:
    """Processes whose command line names the smoke spec (the runner's ``zeroserve up``)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(SPEC).encode() in cmd:
            found[int(entry.name)] = cmd.replace(b"\0", b" ").decode(errors="replace")
    return found


async def _leftovers_after(grace_s: float) -> dict[int, str]:
    """What still runs the spec ``grace_s`` after the runner ended, killed (with its process
    group) so that it holds no port for the tests after this one."""
    left = _running_the_spec()
    for _ in range(int(grace_s / 0.2)):  # polled: a process's end has no event to wait on here
        if not left:
            break
        await asyncio.sleep(0.2)
        left = _running_the_spec()
    for pid in left:
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != os.getpgrp():  # (its own group, as the runner starts it: all of it)
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_step_smoke_run_scales_up_and_back_down_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "report"
    cmd = [
        sys.executable,
        str(ROOT / "loadtests" / "run.py"),
        "--shape=step",
        f"--spec={SPEC}",
        "--duration=45",
        "--rps=15",
        "--user-rps=2.5",
        "--steps=3",
        "--step-s=8",
        "--start-from=zero",
        "--settle-timeout=60",
        "--cooldown=30",
        "--max-error-rate=0",
        f"--out={out}",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), 280)
    finally:
        if proc.returncode is None:  # timed out: SIGINT makes the runner stop zeroserve first
            os.killpg(proc.pid, signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 60)
    log = stdout.decode(errors="replace")
    assert proc.returncode == 0, log
    left = await _leftovers_after(10.0)
    assert not left, f"processes of the run outlived it (killed now): {left}\n{log}"

    summary = json.loads((out / report.SUMMARY_JSON).read_text())
    assert summary["passed"], log
    assert summary["requests"] >= 200, log  # (5 + 10 + 15) req/s × 8 s = 240 sent
    assert summary["failures"] == 0, summary["errors"]

    samples = report.read_replicas(out / report.REPLICAS_CSV)
    during = [s for s in samples if s.revision == "default/smoke-v1" and s.elapsed_s >= 0]
    assert during, log
    assert during[0].ready == 0, "the load did not start from zero"
    peak = max(s.ready or 0 for s in during)
    assert peak >= 2, f"ready replicas never rose to 2 (max {peak})\n{log}"
    assert during[-1].ready == 0, f"replicas did not fall back to zero: {during[-1]}\n{log}"
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"

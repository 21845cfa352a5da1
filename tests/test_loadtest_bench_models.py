"""The model formats benchmark (``loadtests/bench_models.py``) on one format with tiny counts:
it runs end to end (a real ``zeroserve up``, real model servers) and its figures hang together."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bench_models import relayed_fields
from tests.e2e_support import ROOT

REQUESTS = 100


def test_relayed_fields_reads_each_replica_of_the_revision_in_order() -> None:
    log = "\n".join(
        [
            "12:00:00 info    zeroserve.supervisor: replica started  revision=default/a-v1",
            'a-cold-v1-1 | {"msg": "model loaded", "load_s": 9.0}',
            'a-v1-2 | {"msg": "model loaded", "load_s": 0.5}',
            'a-v1-1 | {"msg": "listening on 127.0.0.1:1", "port": 1}',
            'a-v1-1 | {"msg": "model loaded", "load_s": 0.75}',
            'a-v1-1 | {"msg": "warm-up done", "warmup_s": 0.01}',
            'a-v1-2 | {"msg": "warm-up done", "warmup_s": 0.02}',
            "a-v1-3 | not json at all",
            'a-cold-v1-1 | {"msg": "warm-up done", "warmup_s": 9.0}',
        ]
    )
    assert relayed_fields(log, "a-v1") == [
        {"load_s": 0.75, "warmup_s": 0.01},
        {"load_s": 0.5, "warmup_s": 0.02},
    ]
    assert relayed_fields(log, "a-cold-v1") == [{"load_s": 9.0, "warmup_s": 9.0}]
    assert relayed_fields(log, "b-v1") == []


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_one_format_end_to_end_gives_ordered_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--formats", "sklearn", "--starts", "1", "--warmup", "20"]
    args += ["--requests", str(REQUESTS), "--cold", "1", "--deadline", "80", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_models", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=85,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1
    assert report["args"]["formats"] == ["sklearn"]
    [result] = report["formats"]
    assert result["format"] == "sklearn"
    assert (
        result["artifact_bytes"]
        == (ROOT / "examples/models/iris-sklearn/model.joblib").stat().st_size
    )
    assert result["uri"].startswith("http://127.0.0.1:")

    # Load: a new process is ready only after the model is loaded and warmed up.
    start = result["start"]
    assert len(start["start_to_ready_s"]) == len(start["load_s"]) == len(start["warmup_s"]) == 1
    assert start["load_s"][0] > 0
    assert start["warmup_s"][0] > 0
    assert start["start_to_ready_s"][0] > start["load_s"][0] + start["warmup_s"][0]

    # Warm: two extra hops add latency; percentiles are ordered; added is via − direct.
    warm = result["warm"]
    assert warm["requests"] == REQUESTS
    direct, via, added = warm["direct_ms"], warm["via_ms"], warm["added_ms"]
    for ms in (direct, via):
        assert 0 < ms["p50"] <= ms["p99"]
        assert ms["mean"] > 0
    assert via["p50"] > direct["p50"]
    for q in ("p50", "p99", "mean"):
        assert added[q] == pytest.approx(via[q] - direct[q], abs=1e-3)
    assert warm["replica"]["load_s"] > 0
    assert warm["replica"]["warmup_s"] > 0
    assert re.search(r"\(pid \d+\), port \d+ \(listening\)", warm["direct"]), warm["direct"]

    # From zero: the first prediction waits for a whole start, so it outlasts the replica's own
    # load + warm-up and any warm request.
    [cold] = result["cold"]
    assert cold["load_s"] > 0
    assert cold["warmup_s"] > 0
    assert cold["first_prediction_s"] > cold["load_s"] + cold["warmup_s"]
    assert cold["first_prediction_s"] * 1e3 > via["p99"]

    # The printed tables carry the format's rows.
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sklearn |")]
    assert len(rows) == 2, proc.stdout
    assert f"| sklearn | {REQUESTS} |" in proc.stdout

"""The framework-model mode of the cold-start benchmark (``bench_coldstart --model bert``) with a
one-layer, d=32 encoder and one round on the CPU: it runs end to end (real ``zeroserve up`` with
and without the framework zygote, real model servers forked or spawned) and reports each cold
start's phases, no failed request, and a summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bert_model import BertConfig, build
from loadtests.coldstart_framework import infer_body, spec_text, summary
from tests.e2e_support import ROOT

TINY = ["--layers", "1", "--hidden", "32", "--heads", "2", "--ff", "64", "--vocab", "1000"]


def test_the_default_config_is_bert_base_size() -> None:
    config = BertConfig()
    assert 108e6 < config.parameters() < 110e6  # 436 MB of FP32
    tiny = BertConfig(vocab=100, hidden=32, layers=1, heads=2, ff=64)
    pytest.importorskip("torch")
    assert sum(p.numel() for p in build(tiny).parameters()) == tiny.parameters()


def test_spec_hides_the_gpus_only_on_the_cpu() -> None:
    cpu = spec_text(Path("/m/model.pt2"), 2, "cpu")
    assert cpu.count("predictor: {format: pytorch, storageUri: 'file:///m/model.pt2'}") == 2
    assert "bert-1-v1" in cpu
    assert "bert-2" not in cpu
    assert cpu.count('CUDA_VISIBLE_DEVICES": ""') == 2
    assert "CUDA_VISIBLE_DEVICES" not in spec_text(Path("/m/model.pt2"), 2, "cuda")
    body = json.loads(infer_body(2, 3))
    assert body["inputs"][0]["shape"] == [2, 3]
    assert len(body["inputs"][0]["data"]) == 6


def test_summary_judges_the_cpu_goal_against_the_models_own_cost() -> None:
    def rnd(i: int, ttfp: float) -> dict[str, object]:
        cold = {"total_s": ttfp, "phases": {"spawn": 0.0, "load": ttfp - 0.1}, "pod": "p"}
        return {
            "round": i,
            "first_prediction_s": ttfp,
            "requests": 2,
            "failures": 0,
            "cold_start": cold,
        }

    results = {
        "own": [{"load_s": 1.0, "first_inference_s": 0.2}],
        "modes": {
            "zygote": {"rounds": [rnd(0, 9.0), rnd(1, 1.25)]},
            "no-zygote": {"rounds": [rnd(0, 9.0), rnd(1, 3.0)]},
        },
    }
    text = "\n".join(summary(results, "cpu"))
    assert "| zygote | 1 | 0/2 | 1.250 / 1.250 / 1.250 |" in text  # the primer is left out
    assert (
        "zygote: first prediction p95 1.250 s; goal ≤ own load + first inference (1.200) "
        "+ 0.100 = 1.300 s: met" in text
    )
    assert "no-zygote: first prediction p95 3.000 s" in text
    assert "NOT met" in text


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_tiny_model_one_round_on_cpu_with_and_without_the_zygote(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    args = ["--model", "bert", *TINY, "--rounds", "1", "--device", "cpu", "--seq-len", "16"]
    args += ["--baseline", "1", "--deadline", "50", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_coldstart", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    assert report["config"]["layers"] == 1
    [own] = report["own"]
    assert own["load_s"] > 0
    assert own["first_inference_s"] > 0
    assert "accelerator_init_s" not in own
    assert set(report["modes"]) == {"zygote", "no-zygote"}
    for key, mode in report["modes"].items():
        assert [r["round"] for r in mode["rounds"]] == [0, 1], key
        for r in mode["rounds"]:
            assert r["failures"] == 0, r
            assert r["requests"] == 2
            assert r["first_prediction_s"] > 0
            phases = r["cold_start"]["phases"]
            # the supervisor's and the replica's phases in order; on the CPU no accelerator_init
            assert list(phases) == ["spawn", "imports", "fetch", "load", "warmup", "ready"], r
            assert r["cold_start"]["total_s"] >= sum(phases.values()) - 0.01
    # forked from the parked process that imported torch: its imports are not paid again
    forked = report["modes"]["zygote"]["rounds"][1]["cold_start"]["phases"]["imports"]
    spawned = report["modes"]["no-zygote"]["rounds"][1]["cold_start"]["phases"]["imports"]
    assert forked < spawned, (forked, spawned)
    assert "| zygote | 1 | 0/2 |" in proc.stdout
    assert "| no-zygote | 1 | 0/2 |" in proc.stdout

"""The load-test report, profiles and runner pieces, on synthetic data (no locust, no runtime)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from autoscaler.status import RevisionStatus, ScaleChange
from loadtests import report, run
from loadtests.report import Gates, ReplicaSample, RequestRecord

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0  # the load's start, unix seconds


def load_profiles() -> ModuleType:
    # profiles.py lives beside the locustfile (outside the main packages) and is stdlib-only.
    path = ROOT / "loadtests" / "locust" / "profiles.py"
    spec = importlib.util.spec_from_file_location("zs_loadtest_profiles", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


profiles = load_profiles()


def req(t: float, ms: float, *, error: str = "", name: str = "v2 infer (path)") -> RequestRecord:
    return RequestRecord(
        time=T0 + t, name=name, response_time_ms=ms, status=0 if error else 200, error=error
    )


def sample(
    t: float, ready: int | None, desired: int, *, panic: bool = False, rev: str = "default/a"
) -> ReplicaSample:
    return ReplicaSample(
        time=T0 + t, elapsed_s=t, revision=rev, desired=desired, ready=ready, panicking=panic
    )


# --- percentiles and the timeline ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([], 0.5, None, id="empty"),
        pytest.param([7.0], 0.99, 7.0, id="single"),
        pytest.param([1.0, 2.0], 0.5, 1.0, id="median-of-two-is-lower-nearest-rank"),
        pytest.param([float(i) for i in range(1, 101)], 0.95, 95.0, id="p95-of-1-to-100"),
        pytest.param([float(i) for i in range(1, 101)], 0.99, 99.0, id="p99-of-1-to-100"),
        pytest.param([float(i) for i in range(1, 101)], 1.0, 100.0, id="p100-is-max"),
        pytest.param([float(i) for i in range(1, 11)], 0.0, 1.0, id="p0-is-min"),
    ],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert report.percentile(values, q) == expected


def test_timeline_buckets_by_completion_second_and_carries_users_forward() -> None:
    records = [
        req(0.1, 10),
        req(0.9, 30),
        req(1.5, 20, error="CatchResponseError: status 503"),
        req(3.2, 40),
        req(-0.5, 99),  # completed before the load began: not part of it
    ]
    users = {int(T0): 2, int(T0) + 2: 5}
    rows = report.timeline(records, users, started_at=T0, ended_at=T0 + 4.0)
    assert [r.second for r in rows] == [0, 1, 2, 3]
    assert [r.requests for r in rows] == [2, 1, 0, 1]
    assert [r.failures for r in rows] == [0, 1, 0, 0]
    assert [r.users for r in rows] == [2, 5, 5, 5]
    assert (rows[0].p50_ms, rows[0].p99_ms) == (10, 30)
    assert rows[2].p50_ms is None


def test_timeline_extends_to_the_last_request() -> None:
    rows = report.timeline([req(5.5, 1)], {}, started_at=T0, ended_at=T0 + 2.0)
    assert len(rows) == 6
    assert rows[-1].requests == 1


# --- replicas -----------------------------------------------------------------------------------


def test_revision_summary_rose_fell_and_panicked() -> None:
    samples = [
        sample(-2, 1, 1),
        sample(-1, 0, 0),
        sample(0, 0, 0),
        sample(1, 0, 1, panic=True),
        sample(2, 1, 3, panic=True),
        sample(3, 3, 3),
        sample(4, 3, 3, panic=True),
        sample(5, 2, 1),
        sample(6, 0, 0),
    ]
    summary = report.summarize_revisions(samples)["default/a"]
    assert summary.ready_start == 0  # at the load's start, not the initial-scale replica
    assert summary.ready_max == 3
    assert summary.desired_max == 3
    assert summary.ready_end == 0
    assert summary.panic_periods == [(1, 3), (4, 5)]
    assert summary.panic_seconds == 3


def test_revision_summary_per_revision_and_unknown_ready() -> None:
    samples = [
        sample(0, None, -1, rev="default/v1"),
        sample(0, 2, 2, rev="default/v2"),
        sample(1, 1, 1, rev="default/v1"),
    ]
    out = report.summarize_revisions(samples)
    assert sorted(out) == ["default/v1", "default/v2"]
    assert out["default/v1"].ready_start is None
    assert out["default/v1"].ready_max == 1
    assert out["default/v2"].ready_end == 2


def test_samples_from_the_autoscalers_own_status_rows() -> None:
    row = RevisionStatus(
        namespace="default",
        revision="iris-v1",
        desired=3,
        applied=3,
        ready=2,
        panicking=True,
        metric="concurrency",
        target=7.0,
        excess_burst_capacity=-1.0,
        stable_concurrency=4.5,
        panic_concurrency=9.0,
        stable_rps=40.0,
        panic_rps=80.0,
        has_data=True,
        last_change=ScaleChange(from_scale=1, to_scale=3, reason="panic", at=T0),
    )
    payload = json.loads(json.dumps({"revisions": [row.to_dict()]}))
    (s,) = report.samples_from_status(payload, now=T0 + 5, started_at=T0)
    assert s == ReplicaSample(
        time=T0 + 5,
        elapsed_s=5,
        revision="default/iris-v1",
        desired=3,
        ready=2,
        panicking=True,
        stable_concurrency=4.5,
        panic_concurrency=9.0,
    )


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            {"revisions": [{"revision": "a", "desired": 1, "ready": None}]}, id="ready-null"
        ),
        pytest.param([{"revision": "a", "desired": 1}], id="bare-list"),
    ],
)
def test_samples_from_status_tolerates_missing_counts(payload: object) -> None:
    (s,) = report.samples_from_status(payload, now=T0, started_at=T0)
    assert (s.revision, s.desired, s.ready, s.panicking) == ("a", 1, None, False)


def test_samples_from_status_ignores_what_is_not_a_list() -> None:
    assert report.samples_from_status({"error": "x"}, now=T0, started_at=T0) == []


# --- gates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gates", "requests", "error_rate", "p95", "passed"),
    [
        pytest.param(Gates(), 100, 0.0, 120.0, True, id="defaults-zero-errors-pass"),
        pytest.param(Gates(), 100, 0.01, 120.0, False, id="one-percent-errors-fail-default"),
        pytest.param(Gates(max_error_rate=0.01), 100, 0.01, 120.0, True, id="at-the-limit-passes"),
        pytest.param(Gates(max_p95_ms=110), 100, 0.0, 120.0, False, id="p95-over-limit"),
        pytest.param(Gates(max_p95_ms=130), 100, 0.0, 120.0, True, id="p95-under-limit"),
        pytest.param(Gates(max_p95_ms=130), 0, None, None, False, id="no-requests-fail"),
    ],
)
def test_gates(
    gates: Gates, requests: int, error_rate: float | None, p95: float | None, passed: bool
) -> None:
    results = report.evaluate_gates(gates, requests=requests, error_rate=error_rate, p95_ms=p95)
    assert all(r.passed for r in results) is passed
    assert {r.name for r in results} >= {"min_requests", "max_error_rate"}


# --- the folder ---------------------------------------------------------------------------------


def write_folder(folder: Path, *, fail_one: bool) -> None:
    records = [req(i * 0.25, 100 + (i % 10)) for i in range(40)]  # 10 s, 4 req/s
    if fail_one:
        records.append(req(5.0, 3, error="CatchResponseError: status 503"))
    report.write_requests(folder / report.REQUESTS_CSV, records)
    with (folder / report.REPLICAS_CSV).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(report.REPLICA_FIELDS)
        # elapsed_s as the sampler wrote it (from its own start, 3 s before the load)
        for t, ready, desired, panic in [(-3, 0, 0, 0), (0, 0, 0, 0), (2, 0, 2, 1), (4, 2, 2, 0)]:
            writer.writerow([T0 + t, t + 3, "default/a", desired, ready, panic, 0, 0])
        for t in range(5, 16):
            writer.writerow(
                [T0 + t, t + 3, "default/a", 0 if t > 11 else 2, 0 if t > 12 else 2, 0, 0, 0]
            )
    with (folder / f"{report.LOCUST_PREFIX}_stats_history.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Timestamp", "User Count", "Type", "Name", "Requests/s"])
        writer.writerow([int(T0), 2, "", "Aggregated", 0])
        writer.writerow([int(T0) + 1, 2, "GET", "x", 0])
    (folder / report.META_JSON).write_text(
        json.dumps({"load_started_at": T0, "load_ended_at": T0 + 10.0, "shape": "step"})
    )


def test_build_report_writes_timeline_and_summary(tmp_path: Path) -> None:
    write_folder(tmp_path, fail_one=False)
    summary = report.build_report(tmp_path, Gates(max_p95_ms=200))
    assert summary["passed"] is True
    assert summary["requests"] == 40
    assert summary["failures"] == 0
    assert summary["error_rate"] == 0.0
    assert summary["latency_ms"]["p50"] == 104
    assert summary["rps"]["max"] == 4
    assert summary["max_users"] == 2
    rev = summary["replicas"]["revisions"]["default/a"]
    assert (rev["ready_start"], rev["ready_max"], rev["ready_end"]) == (0, 2, 0)
    assert rev["panic_periods"] == [[2.0, 3.0]]
    assert json.loads((tmp_path / report.SUMMARY_JSON).read_text()) == summary
    with (tmp_path / report.TIMELINE_CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    assert rows[0]["requests"] == "4"
    # replicas.csv is rewritten with times relative to the load's start
    assert [s.elapsed_s for s in report.read_replicas(tmp_path / report.REPLICAS_CSV)][:2] == [
        -3,
        0,
    ]
    assert "gate max_p95_ms: PASS" in report.format_summary(summary)


def test_build_report_fails_the_error_gate_on_one_error(tmp_path: Path) -> None:
    write_folder(tmp_path, fail_one=True)
    summary = report.build_report(tmp_path, Gates())
    assert summary["passed"] is False
    assert summary["failures"] == 1
    assert summary["errors"] == {"CatchResponseError: status 503": 1}
    assert report.main([str(tmp_path)]) == 1
    assert report.main([str(tmp_path), "--max-error-rate", "0.05"]) == 0


def test_read_requests_skips_a_row_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("time,name,response_time_ms,status,error\n1.5,a,10.0,200,\n2.0,a,")
    assert report.read_requests(path) == [RequestRecord(1.5, "a", 10.0, 200, "")]


# --- profiles (the shapes' rates) ---------------------------------------------------------------


def rates(name: str, times: list[float], **kw: object) -> list[float | None]:
    profile = profiles.make_profile(name, profiles.ProfileParams(**kw))
    return [profile(t) for t in times]


def test_step_profile_climbs_then_rests_then_ends() -> None:
    # Knative's stepped load-test shape scaled down: 3 steps of 10 s up to 30 rps, then rest.
    got = rates("step", [0, 9.9, 10, 20, 29.9, 30, 59.9, 60], duration_s=60, rps=30, steps=3)
    assert got == [10, 10, 20, 30, 30, 0, 0, None]


def test_step_profile_explicit_step_length() -> None:
    got = rates("step", [0, 4, 8, 12], duration_s=20, rps=20, steps=2, step_s=4)
    assert got == [10, 20, 0, 0]


def test_spike_profile_is_zero_burst_zero() -> None:
    got = rates("spike", [0, 29.9, 30, 49.9, 50, 99], duration_s=100, rps=50)
    assert got == [0, 0, 50, 50, 0, 0]


def test_diurnal_profile_is_a_sine_from_trough_to_crest() -> None:
    got = rates("diurnal", [0, 25, 50, 75], duration_s=100, rps=40, min_rps=10)
    assert got[0] == pytest.approx(10)
    assert got[1] == pytest.approx(25)
    assert got[2] == pytest.approx(40)
    assert got[3] == pytest.approx(25)


def test_steady_profile() -> None:
    assert rates("steady", [0, 59, 60], duration_s=60, rps=7) == [7, 7, None]


def test_trace_profile_holds_each_row_and_scales(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("second,rps\n# comment\n0,2\n3,10\n5,0\n")
    kw = {"trace": str(path), "duration_s": 100}
    assert rates("trace", [0, 2.9, 3, 4.9, 5, 5.9, 6], **kw) == [2, 2, 10, 10, 0, 0, None]
    fast = rates("trace", [0, 1.5, 2.9, 3.0], **kw, trace_speed=2, trace_scale=3)
    assert fast == [6, 30, 0, None]


def test_the_example_trace_parses() -> None:
    points = profiles.read_trace(ROOT / "loadtests" / "traces" / "example.csv")
    assert points[0][0] == 0
    assert all(rate >= 0 for _, rate in points)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("second,rps\n", id="no-rows"),
        pytest.param("0,1\nx,2\n", id="bad-row"),
        pytest.param("0,-1\n", id="negative"),
    ],
)
def test_trace_refuses_bad_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"t\.csv"):
        profiles.read_trace(path)


@pytest.mark.parametrize(
    ("rps", "user_rps", "users"),
    [
        pytest.param(0, 2, 0, id="no-load"),
        pytest.param(1, 2, 1, id="rounds-up"),
        pytest.param(12, 0.4, 30, id="float-noise-not-rounded-up"),
        pytest.param(30, 2, 15, id="exact"),
    ],
)
def test_users_for(rps: float, user_rps: float, users: int) -> None:
    assert profiles.users_for(rps, user_rps) == users


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match="must be one of steady, step"):
        profiles.make_profile("ramp", profiles.ProfileParams())


# --- runner pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "service", "scenario", "tags"),
    [
        pytest.param("examples/iris.yaml", "iris", "model", (), id="iris-v1-and-v2"),
        pytest.param("examples/canary.yaml", "iris", "tagged", ("v1", "v2"), id="canary-tags"),
        pytest.param("examples/gpu-emulated.yaml", "gpu-emulated", "sleep", (), id="gpu-sleep"),
        pytest.param("loadtests/specs/smoke-step.yaml", "smoke", "sleep", (), id="smoke"),
    ],
)
def test_target_from_the_example_specs(
    spec: str, service: str, scenario: str, tags: tuple[str, ...]
) -> None:
    target = run.target_from_spec(ROOT / spec, None, None)
    assert (target.service, target.scenario, target.tags) == (service, scenario, tags)
    assert set(run.SCENARIOS[target.scenario]) <= set(LOCUSTFILE_USERS)


LOCUSTFILE_USERS = [
    "InferV2ByPath",
    "InferV2ByHost",
    "PredictV1ByPath",
    "PredictV1ByHost",
    "PredictV1Tagged",
    "SleepByHost",
]


def test_locustfile_defines_every_scenario_user() -> None:
    text = (ROOT / "loadtests" / "locust" / "locustfile.py").read_text()
    for name in LOCUSTFILE_USERS:
        assert f"class {name}(ZeroserveUser)" in text


def test_unknown_service_is_a_run_error() -> None:
    with pytest.raises(run.RunError, match="--service nope"):
        run.target_from_spec(ROOT / "examples" / "iris.yaml", "nope", None)


def test_settled_and_back_to_start() -> None:
    assert not run.settled([], "settled")
    assert run.settled([sample(0, 1, 1)], "settled")
    assert not run.settled([sample(0, 1, 1)], "zero")
    assert run.settled([sample(0, 0, 0)], "zero")
    assert not run.settled([sample(0, 0, -1)], "settled")  # no decision yet
    assert run.back_to_start([sample(0, 0, 0)], {"default/a": 0})
    assert not run.back_to_start([sample(0, 2, 0)], {"default/a": 0})
    assert not run.back_to_start([sample(0, None, 0)], {"default/a": 0})


def test_request_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("time,name,response_time_ms,status,error\n10.0,a,5,200,\n10.5,a,7,503,boom\n11")
    tail = run.RequestTail(path)
    tail.poll(now=11.0)
    assert (tail.total, tail.failures) == (2, 1)
    with path.open("a") as fh:
        fh.write(".0,a,9,200,\n")
    tail.poll(now=11.2)
    assert (tail.total, tail.failures) == (3, 1)
    assert "1.5 req/s" in tail.line()


def test_parse_args_needs_a_shape_or_a_bench() -> None:
    with pytest.raises(SystemExit):
        run.parse_args([])
    args = run.parse_args(["--shape", "trace"])
    assert args.trace.endswith("example.csv")


def test_plan_passes_the_shape_parameters_to_locust(tmp_path: Path) -> None:
    argv = [
        "--shape",
        "step",
        "--spec",
        str(ROOT / "examples/canary.yaml"),
        "--duration",
        "30",
        "--rps",
        "12",
    ]
    plan = run.plan_from_args(run.parse_args([*argv, "--out", str(tmp_path)]), argv)
    opts = dict(o.split("=", 1) for o in plan.locust_options if "=" in o)
    assert opts["--zs-duration"] == "30.0"
    assert opts["--zs-rps"] == "12.0"
    assert opts["--zs-tags"] == "v1,v2"
    assert opts["--zs-requests-csv"] == str(tmp_path / "requests.csv")
    assert plan.users == run.SCENARIOS["tagged"]
    assert plan.port != plan.status_port
    assert math.isclose(plan.duration_s, 30)


def test_bench_entry_point_refuses_an_absent_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--bench", "no-such-bench"]) == run.EXIT_RUN_FAILED
    assert "bench_no-such-bench.py is not in this checkout" in capsys.readouterr().out


def test_bench_entry_point_runs_a_present_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert "decider" in run.available_benches()
    rc = run.main(["--bench", "decider", "--bench-args", "--revisions 50 --rounds 1"])
    assert rc == run.EXIT_PASSED
    assert "loadtests.bench_decider --revisions 50 --rounds 1" in capsys.readouterr().out

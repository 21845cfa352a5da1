"""The hop benchmark's peers (``loadtests.peers``): Knative's Go queue-proxy must be given every
variable its v0.42.2 config requires and nothing from this process; a run with it moves whole into
a network namespace of its own; another checkout is named by its commit; the harness starts a
process pinned before it runs, with a clean environment, and kills it when told."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import harness, peers

REPO = Path(__file__).resolve().parents[1]

# knative.dev/serving@v0.42.2 pkg/queue/sharedmain/main.go: the config struct's required:"true"
# fields (envconfig, split_words).
_REQUIRED = (
    "CONTAINER_CONCURRENCY",
    "QUEUE_SERVING_PORT",
    "QUEUE_SERVING_TLS_PORT",
    "USER_PORT",
    "REVISION_TIMEOUT_SECONDS",
    "SERVING_LOGGING_CONFIG",
    "SERVING_LOGGING_LEVEL",
    "SERVING_NAMESPACE",
    "SERVING_CONFIGURATION",
    "SERVING_REVISION",
    "SERVING_POD",
    "SERVING_POD_IP",
)


def test_knative_queue_env_is_complete_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://example.invalid:4317")
    env = peers.knative_queue_env(user_port=8080, port=8012)
    assert set(_REQUIRED) <= set(env)
    assert not any(k.startswith("OTEL_") or k == "GOMAXPROCS" for k in env)
    assert env["USER_PORT"] == "8080"
    assert env["QUEUE_SERVING_PORT"] == "8012"
    assert env["CONTAINER_CONCURRENCY"] == "0"  # no breaker, as the queue-proxy under test
    assert env["SERVING_REQUEST_METRICS_BACKEND"] == ""  # request metrics off
    assert env["TRACING_CONFIG_BACKEND"] == "none"  # "" would start a tracer
    assert env["SERVING_ENABLE_REQUEST_LOG"] == "false"
    assert env["ENABLE_PROFILING"] == "false"
    assert json.loads(env["SERVING_LOGGING_CONFIG"])["level"] == "error"
    int(env["REVISION_TIMEOUT_SECONDS"])  # envconfig parses it as an int


def test_knative_queue_env_sets_gomaxprocs_when_pinned() -> None:
    assert peers.knative_queue_env(8080, 8012, gomaxprocs=1)["GOMAXPROCS"] == "1"


def test_knative_queue_binary_prefers_the_environment_then_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = tmp_path / f"knative-queue-{peers.KNATIVE_QUEUE_VERSION}" / "queue"
    built.parent.mkdir()
    built.write_text("")
    built.chmod(0o755)
    monkeypatch.setenv("ZEROSERVE_TOOLS_CACHE", str(tmp_path))
    monkeypatch.delenv("ZEROSERVE_KNATIVE_QUEUE", raising=False)
    assert peers.knative_queue_binary() == str(built)
    monkeypatch.setenv("ZEROSERVE_KNATIVE_QUEUE", "/opt/queue")
    assert peers.knative_queue_binary() == "/opt/queue"


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare --net needs root (CI runs as root)")
def test_a_run_moves_into_a_network_namespace_of_its_own_with_loopback_up() -> None:
    mine = os.readlink("/proc/self/ns/net")
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            held.bind(("0.0.0.0", 8022))  # taken here: the run must not see it
            held.listen()
        except OSError:
            pass  # something on this machine holds it already: as good
        done = subprocess.run(
            [sys.executable, "-m", "tests.netns_support", "--seconds", "1"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 0, done.stderr
    netns, mark, *argv = done.stdout.split()
    assert netns.startswith("net:[")
    assert netns != mine
    assert mark == "on"  # the variables given reach the run inside
    assert argv == ["--seconds", "1"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_checkout_label_is_the_short_commit_dirty_or_not(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = _git(repo, "rev-parse", "--short", "HEAD")
    assert peers.checkout_label(repo) == sha
    (repo / "b.py").write_text("")  # untracked: still the commit
    assert peers.checkout_label(repo) == sha
    (repo / "a.py").write_text("x = 2\n")
    assert peers.checkout_label(repo) == f"{sha}-dirty"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert peers.checkout_label(plain) == "plain"


def test_checkout_problem_names_a_folder_without_a_queue_proxy(tmp_path: Path) -> None:
    problem = peers.checkout_problem(tmp_path)
    assert problem is not None
    assert "no queue_proxy package" in problem


def test_checkout_env_puts_the_other_checkout_before_this_ones_install(tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "queue_proxy").mkdir(parents=True)
    (other / "queue_proxy" / "__init__.py").write_text("")
    done = subprocess.run(
        [sys.executable, "-c", "import queue_proxy; print(queue_proxy.__file__)"],
        cwd=tmp_path,  # (not the checkout: the path alone must find it)
        env={**os.environ, **peers.checkout_env(other)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()).parent == (other / "queue_proxy").resolve()


def test_spawn_pins_before_the_program_runs_and_kills_when_told() -> None:
    # a program that ignores SIGTERM, as Knative's queue-proxy drains for 30 s on it
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with harness.processes() as ps:
        proc = ps.spawn(
            [sys.executable, "-c", code], {"ONLY": "this"}, {0}, clean_env=True, kill=True
        )
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert [v for v in environ if v] == [b"ONLY=this"]
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            assert os.sched_getaffinity(int(task.name)) == {0}
    assert proc.returncode == -9  # killed at once, not after the 5 s a SIGTERM gets


def test_ratio_goal_line() -> None:
    nan = float("nan")
    rows = [
        harness.Row(name, cap, nan, nan, nan, nan, nan, nan, cpu, nan, nan)
        for name, cap, cpu in [("zs", 80_000.0, 50.0), ("go", 20_000.0, 200.0)]
    ]
    assert harness.ratio_goal(rows, "capacity", "zs", "go", "≥ 4") == (
        "capacity zs/go = 4.00 (80,000 / 20,000; goal ≥ 4)"
    )
    assert harness.ratio_goal(rows, "cpu_us_rate", "zs", "go", "≤ 0.5") == (
        "CPU µs/request at the rate zs/go = 0.25 (50 / 200; goal ≤ 0.5)"
    )

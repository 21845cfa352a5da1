"""The compiled dataplane: the suite runs it, and the pure-Python source behaves the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dataplane

ROOT = Path(__file__).resolve().parent.parent
PURE = {**os.environ, "ZEROSERVE_PURE_PYTHON": "1"}


def test_the_suite_runs_the_compiled_core_unless_told_not_to() -> None:
    # `make test` builds it (setup.py): a suite that silently ran the Python source would not
    # test what ships.
    if os.environ.get("ZEROSERVE_PURE_PYTHON") == "1":
        assert not dataplane.compiled()
        return
    assert dataplane.compiled(), "no compiled dataplane: run `make build`"
    for name in dataplane.COMPILED_MODULES:
        mod = sys.modules.get(f"dataplane.{name}") or __import__(f"dataplane.{name}")
        assert not str(getattr(mod, "__file__", "")).endswith(".py"), name


def test_pure_python_switch_loads_every_compiled_module_from_its_source() -> None:
    code = (
        "import dataplane, importlib\n"
        "print(dataplane.compiled())\n"
        "for n in dataplane.COMPILED_MODULES:\n"
        "    print(importlib.import_module('dataplane.' + n).__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=PURE, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False"
    assert len(out) == 1 + len(dataplane.COMPILED_MODULES)
    assert all(f.endswith(".py") for f in out[1:]), out


def test_the_core_tests_pass_on_the_pure_python_source() -> None:
    # The same behaviour from the same source, compiled or not.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_dataplane.py",
            "tests/test_deadlines.py",
            "tests/test_headers.py",
            "tests/test_dataplane_build.py::test_the_suite_runs_the_compiled_core_unless_told_not_to",
        ],
        cwd=ROOT,
        env=PURE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # (the last test named asserts that they ran on the source)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_a_module_changed_after_its_build_is_reported_stale(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("")
    (tmp_path / "forward.py").write_text("")
    (tmp_path / "forward.pxd").write_text("")
    (tmp_path / "headers.py").write_text("")  # never built: not stale
    time.sleep(0.01)
    (tmp_path / "server.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "forward.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert dataplane.stale_builds(tmp_path) == []
    time.sleep(0.01)
    (tmp_path / "forward.pxd").write_text("# edited")
    assert dataplane.stale_builds(tmp_path) == ["forward"]
    (tmp_path / "server.py").write_text("# edited")
    assert dataplane.stale_builds(tmp_path) == ["server", "forward"]

"""The compiled dataplane: the suite runs it, and the pure-Python source behaves the same."""

from __future__ import annotations

import importlib
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
        mod = importlib.import_module(name)
        assert not str(getattr(mod, "__file__", "")).endswith(".py"), name


def test_pure_python_switch_loads_every_compiled_module_from_its_source() -> None:
    code = (
        "import dataplane, importlib\n"
        "print(dataplane.compiled())\n"
        "for n in dataplane.COMPILED_MODULES:\n"
        "    print(importlib.import_module(n).__file__)\n"
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
            "tests/test_simple_messages.py",
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
    dp, qp = tmp_path / "dataplane", tmp_path / "queue_proxy"
    dp.mkdir()
    qp.mkdir()
    (dp / "server.py").write_text("")
    (dp / "forward.py").write_text("")
    (dp / "forward.pxd").write_text("")
    (dp / "headers.py").write_text("")  # never built: not stale
    (qp / "handler.py").write_text("")
    time.sleep(0.01)
    for d, name in ((dp, "server"), (dp, "forward"), (qp, "handler")):
        (d / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert dataplane.stale_builds(tmp_path) == []
    time.sleep(0.01)
    (dp / "forward.pxd").write_text("# edited")
    assert dataplane.stale_builds(tmp_path) == ["dataplane.forward"]
    (dp / "server.py").write_text("# edited")
    (qp / "handler.py").write_text("# edited")
    assert dataplane.stale_builds(tmp_path) == [
        "dataplane.server",
        "dataplane.forward",
        "queue_proxy.handler",
    ]


def test_setup_builds_the_modules_the_package_names() -> None:
    # setup.py reads the list from dataplane/__init__.py without importing it: the two agree.
    code = "import setup; print(' '.join(setup.compiled_modules()))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tuple(out) == dataplane.COMPILED_MODULES

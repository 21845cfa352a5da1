"""Session checks: the tests must run the dataplane that the source says."""

from __future__ import annotations

import pytest

import dataplane


def pytest_report_header() -> str:
    core = "compiled (Cython)" if dataplane.compiled() else "pure Python"
    return f"dataplane core: {core}"


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = dataplane.stale_builds()
    if stale and dataplane.compiled():
        pytest.exit(
            f"dataplane modules {', '.join(stale)} changed after they were compiled: "
            "run `make build` (or set ZEROSERVE_PURE_PYTHON=1 to test the Python source)",
            returncode=2,
        )

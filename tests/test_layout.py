"""Import rules of DESIGN.md: dependencies point one way, and the pure cores stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "metrics",
    "cluster",
    "dataplane",
    "queue_proxy",
    "activator",
    "autoscaler",
    "zeroserve",
    "modelserver",
)

# What each package may import from the project (besides itself).
ALLOWED: dict[str, set[str]] = {
    "metrics": set(),
    "cluster": {"metrics"},
    "dataplane": {"metrics", "cluster"},
    "queue_proxy": {"metrics", "cluster", "dataplane"},
    "activator": {"metrics", "cluster", "dataplane"},
    "autoscaler": {"metrics", "cluster"},
    "zeroserve": {
        "metrics",
        "cluster",
        "dataplane",
        "queue_proxy",
        "activator",
        "autoscaler",
        "modelserver",
    },
    # the workload, not the data path: the proxies never import it (DESIGN.md)
    "modelserver": {"metrics"},
}

# The pure cores: no event loop, no HTTP.
PURE = (
    "autoscaler/config.py",
    "autoscaler/scaling.py",
    "autoscaler/resolve.py",
    "metrics/windows.py",
    "metrics/stat.py",
    "cluster/spec.py",
)
IMPURE_MODULES = {"asyncio", "aiohttp", "uvloop", "time", "logging"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package: str) -> None:
    forbidden = set(PACKAGES) - ALLOWED[package] - {package}
    for path in package_files(package):
        bad = imported_roots(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("relpath", PURE)
def test_pure_cores_import_no_io(relpath: str) -> None:
    path = ROOT / relpath
    if not path.exists():
        pytest.fail(f"{relpath} is missing")
    bad = imported_roots(path) & IMPURE_MODULES
    assert not bad, f"{relpath} imports {sorted(bad)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_is_for(package: str) -> None:
    init = ROOT / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"{package}/__init__.py has no docstring"

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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each project module → the project modules it imports: at the top, in a function, or for
    annotations only (``if TYPE_CHECKING:``, which is a cycle all the same to a reader);
    ``from package import module`` names the module."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in package_files(pkg)}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(r for a in node.names if (r := resolve(a.name)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # the submodule a name is, else the module the name is in
                deps.update(r for a in node.names if (r := resolve(f"{node.module}.{a.name}")))
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_modules() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the walk found the packages' modules
    assert "dataplane.upstream" in graph["dataplane.forward"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_core_imports(path: Path) -> list[str]:
    """``from dataplane... import _name`` (or ``cimport``, or from a ``_module``) in ``path``."""
    if path.suffix == ".py":
        tree = ast.parse(path.read_text(), filename=str(path))
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dataplane"):
                names = [a.name for a in node.names]
                parts = (node.module or "").split(".")
                if any(x.startswith("_") for x in names + parts):
                    found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import):
                found.extend(
                    f"{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("dataplane.")
                    and any(x.startswith("_") for x in a.name.split("."))
                )
        return found
    found = []  # a .pxd: "from dataplane.x cimport a, b" on one line
    for n, line in enumerate(path.read_text().splitlines(), 1):
        words = line.replace(",", " ").split()
        if (
            len(words) >= 4
            and words[0] == "from"
            and words[1].startswith("dataplane")
            and any(x.startswith("_") for x in words[1].split(".") + words[3:])
        ):
            found.append(f"{n}: {line.strip()}")
    return found


def test_no_private_name_of_the_core_is_imported_outside_it() -> None:
    """The proxies use the core's public API (``dataplane.api``, the public names of its
    modules), never a ``_name`` of it, in Python or in a ``.pxd``'s ``cimport``."""
    bad = [
        f"{path.relative_to(ROOT)}:{found}"
        for package in PACKAGES
        if package != "dataplane"
        for pattern in ("*.py", "*.pxd")
        for path in sorted((ROOT / package).rglob(pattern))
        for found in _private_core_imports(path)
    ]
    assert not bad, "private names of dataplane imported:\n" + "\n".join(bad)


def test_no_module_of_the_core_is_over_500_lines() -> None:
    """The forwarding core stays in modules one can read whole (docs/dataplane.md)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in package_files("dataplane")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long

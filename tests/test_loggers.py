"""Every logger is under the one ``zeroserve`` root, so an operator sets them all from it.

A component's logger is ``zeroserve.<component>[.<part>]`` (docs/configuration.md, "Logs"):
``logging.getLogger("zeroserve").setLevel(...)`` (or a component's ``--log-level``, which sets
the root logger) then reaches every one of them, and none keeps a level of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests import test_layout as layout
from tests.test_layout import ROOT

# The repository's packages with code that runs (tests and setup.py make no loggers).
PACKAGES = (*layout.PACKAGES, "examples", "loadtests")


def logger_names(path: Path) -> list[tuple[int, str | None]]:
    """``(line, name)`` of each ``getLogger(...)`` call in ``path``; ``None`` when the name is
    not a string literal (``__name__``, a variable, or no argument: the root logger)."""
    found: list[tuple[int, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called != "getLogger":
            continue
        arg = node.args[0] if node.args else None
        name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        found.append((node.lineno, name))
    return found


def test_every_logger_is_under_the_zeroserve_root() -> None:
    calls = [
        (path.relative_to(ROOT), line, name)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)  # a venv
        for line, name in logger_names(path)
    ]
    assert len(calls) >= 20, calls  # the walk found the components' loggers
    bad = [
        f"{path}:{line}: getLogger({name!r})"
        for path, line, name in calls
        if name is None or not name.startswith("zeroserve.")
    ]
    assert not bad, "loggers outside zeroserve.*:\n" + "\n".join(bad)

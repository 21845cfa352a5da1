"""Each compiled class's attributes match its ``.pxd`` (issue 21, item 3).

A ``.pxd`` beside a compiled module makes its classes extension types: an instance has only the
attributes its ``.pxd`` declares (``cdef public TYPE NAME``), so an attribute added in Python
and forgotten there passes every pure-Python test and raises AttributeError compiled. Checked
here from the text of the files, for every module in :data:`dataplane.COMPILED_MODULES` that has
a ``.pxd``, without building anything:

1. every class the ``.pxd`` declares is a class of the ``.py``;
2. the ``.pxd``'s attributes of a class are its ``__slots__`` (where it has them), its own only:
   a subclass lists neither in its ``.pxd`` nor in its ``__slots__`` an attribute of its base;
   and its bases are the ``.pxd``'s;
3. every ``self.NAME`` a method of the class assigns is an attribute of the class or of one of
   its bases (declared in this ``.pxd`` or in another module's one, through ``cimport``).
   Properties are not attributes; neither are class-level annotations.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dataplane

ROOT = dataplane.ROOT

# the header of a class declaration: ``cdef class Name``, ``cdef class Name(Base):``
_CLASS = re.compile(
    r"(?:cdef|ctypedef)\s+(?:(?:public|api|readonly)\s+)*class\s+(\w+)\s*"
    r"(?:\(\s*([\w.\s,]*)\))?\s*(?:\[[^\]]*\])?\s*(:)?\s*$"
)
_CDEF = re.compile(r"cdef\s+(?:(public|readonly)\s+)?(.*)$")
_CDEF_BLOCK = re.compile(r"cdef\s*(?:(public|readonly)\s*)?:$")
_FROM_CIMPORT = re.compile(r"from\s+([\w.]+)\s+cimport\s+(.+)$")
_CIMPORT = re.compile(r"cimport\s+(.+)$")
_IDENT = re.compile(r"[A-Za-z_]\w*")


@dataclass
class PxdClass:
    name: str
    line: int
    bases: list[str] = field(default_factory=list)  # as written: "Base", "module.Base"
    attrs: dict[str, int] = field(default_factory=dict)  # name -> line


@dataclass
class Pxd:
    path: Path
    classes: dict[str, PxdClass] = field(default_factory=dict)
    # ``from mod cimport Name as local``: local -> (mod, Name)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    # ``cimport pkg.mod as local``: local -> pkg.mod
    modules: dict[str, str] = field(default_factory=dict)


@dataclass
class PyClass:
    name: str
    line: int
    bases: list[str]  # the last part of each dotted name
    slots: dict[str, int] | None  # name -> line; None: the class has no __slots__
    assigned: dict[str, int]  # self.NAME assigned in a method -> first line
    properties: set[str]


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0].rstrip()


def _attribute_names(decl: str) -> list[str]:
    """The names ``TYPE a, b`` declares (after ``cdef [public]``); [] for a function."""
    decl = decl.strip()
    if decl.startswith("("):  # a ctuple type: (int, int) name
        depth = 0
        for i, c in enumerate(decl):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0:
                decl = "ctuple " + decl[i + 1 :]
                break
    if "(" in decl.split("=", 1)[0]:
        return []  # a cdef/inline method, not an attribute
    decl = re.sub(r"\[[^\]]*\]", "", decl.split("=", 1)[0])  # arrays, defaults
    first, *rest = decl.split(",")
    words = _IDENT.findall(first)
    if len(words) < 2:  # a type and a name at least
        return []
    names = [words[-1]]
    for part in rest:
        found = _IDENT.findall(part)
        if found:
            names.append(found[-1])
    return names


def _logical_lines(path: Path) -> Iterator[tuple[int, int, str]]:
    """Line number, indent and text of each statement: bracketed continuations joined,
    comments and blank lines left out."""
    start, indent, parts, depth = 0, 0, list[str](), 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = _strip_comment(raw)
        if not line.strip() and depth == 0:
            continue
        if depth == 0:
            start, indent, parts = n, len(line) - len(line.lstrip()), []
        parts.append(line.strip())
        depth += line.count("(") + line.count("[") - line.count(")") - line.count("]")
        if depth <= 0:
            depth = 0
            yield start, indent, " ".join(parts)


def parse_pxd(path: Path) -> Pxd:
    """The classes, their attributes and the cimports of a ``.pxd`` (its text only)."""
    pxd = Pxd(path)
    current: PxdClass | None = None
    block: tuple[int, str | None] | None = None  # a ``cdef:`` block: its indent, visibility
    for n, indent, text in _logical_lines(path):
        if indent == 0:
            current, block = None, None
            if m := _CLASS.match(text):
                name, bases, colon = m.group(1), m.group(2), m.group(3)
                cls = pxd.classes.setdefault(name, PxdClass(name, n))
                if bases is not None:
                    cls.bases = [
                        b.strip() for b in bases.split(",") if b.strip() not in ("", "object")
                    ]
                if colon:
                    cls.line = n
                    current = cls
            elif m := _FROM_CIMPORT.match(text):
                for item in m.group(2).strip("()").split(","):
                    words = item.split()
                    if words:
                        pxd.names[words[-1]] = (m.group(1), words[0])
            elif m := _CIMPORT.match(text):
                for item in m.group(1).split(","):
                    words = item.split()
                    if words:
                        pxd.modules[words[-1]] = words[0]
            continue
        if current is None:
            continue  # the body of a function
        if block is not None and indent <= block[0]:
            block = None
        if block is not None:
            names = _attribute_names(text)
        elif m := _CDEF_BLOCK.match(text):
            block = (indent, m.group(1))
            continue
        elif m := _CDEF.match(text):
            names = _attribute_names(m.group(2))
        else:
            continue  # cpdef, a decorator, pass, a docstring
        for attr in names:
            current.attrs.setdefault(attr, n)
    return pxd


def _is_property(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Name) and target.id in ("property", "cached_property"):
            return True
        if isinstance(target, ast.Attribute) and target.attr in (
            "setter",
            "deleter",
            "getter",
            "cached_property",
        ):
            return True
    return False


def _is_static(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod")
        for d in fn.decorator_list
    )


def _walk_function(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a method, nested functions included, nested classes not."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            continue
        yield child
        yield from _walk_function(child)


def _self_assignments(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, int]:
    args = [*fn.args.posonlyargs, *fn.args.args]
    if not args or _is_static(fn):
        return {}
    me = args[0].arg
    declared_only = {  # ``self.x: T`` with no value assigns nothing
        id(node.target)
        for node in _walk_function(fn)
        if isinstance(node, ast.AnnAssign)
        if node.value is None
    }
    found: dict[str, int] = {}
    for node in _walk_function(fn):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == me
            and id(node) not in declared_only
        ):
            found.setdefault(node.attr, node.lineno)
    return found


def _slots(node: ast.ClassDef) -> dict[str, int] | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return {value.value: value.lineno}
        if isinstance(value, ast.Tuple | ast.List):
            slots: dict[str, int] = {}
            for elt in value.elts:
                if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
                    raise ValueError(f"line {elt.lineno}: __slots__ of {node.name} not literal")
                slots[elt.value] = elt.lineno
            return slots
        raise ValueError(f"line {stmt.lineno}: __slots__ of {node.name} not a literal tuple")
    return None


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):  # Generic[T]
        return _base_name(node.value)
    return ast.unparse(node)


def parse_py(path: Path) -> dict[str, PyClass]:
    """The module-level classes of a ``.py``: bases, ``__slots__``, ``self.X`` assigned."""
    tree = ast.parse(path.read_text(), filename=str(path))
    classes: dict[str, PyClass] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        assigned: dict[str, int] = {}
        properties: set[str] = set()
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                if _is_property(stmt):
                    properties.add(stmt.name)
                for name, line in _self_assignments(stmt).items():
                    assigned.setdefault(name, line)
        classes[node.name] = PyClass(
            name=node.name,
            line=node.lineno,
            bases=[b for b in map(_base_name, node.bases) if b != "object"],
            slots=_slots(node),
            assigned=assigned,
            properties=properties,
        )
    return classes


class Checker:
    """Checks compiled modules against their ``.pxd``; the modules live under ``root``."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self._pxds: dict[str, Pxd | None] = {}
        self._pys: dict[str, dict[str, PyClass]] = {}

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def pxd(self, module: str) -> Pxd | None:
        if module not in self._pxds:
            path = dataplane.source(module, self.root).with_suffix(".pxd")
            self._pxds[module] = parse_pxd(path) if path.exists() else None
        return self._pxds[module]

    def py(self, module: str) -> dict[str, PyClass]:
        if module not in self._pys:
            path = dataplane.source(module, self.root)
            self._pys[module] = parse_py(path) if path.exists() else {}
        return self._pys[module]

    def resolve(self, module: str, written: str) -> tuple[str, PxdClass] | None:
        """The class a ``.pxd`` of ``module`` names ``written`` (a base): where it is declared."""
        pxd = self.pxd(module)
        if pxd is None:
            return None
        head, _, name = written.rpartition(".")
        if not head:
            if name in pxd.classes:
                return module, pxd.classes[name]
            if name in pxd.names:
                other, real = pxd.names[name]
                found = self.pxd(other)
                if found is not None and real in found.classes:
                    return other, found.classes[real]
            return None
        # mod.Name, after ``from pkg cimport mod`` or ``cimport pkg.mod [as mod]``
        other = ".".join(pxd.names[head]) if head in pxd.names else pxd.modules.get(head, head)
        found = self.pxd(other)
        if found is not None and name in found.classes:
            return other, found.classes[name]
        return None

    def ancestors(self, module: str, cls: PxdClass) -> Iterator[tuple[str, PxdClass]]:
        """The bases of ``cls`` (declared in ``module``'s .pxd), nearest first."""
        seen = {(module, cls.name)}
        while cls.bases:
            found = self.resolve(module, cls.bases[0])
            if found is None or (found[0], found[1].name) in seen:
                return
            module, cls = found
            seen.add((module, cls.name))
            yield module, cls

    def check(self, module: str) -> list[str]:
        """What is wrong with ``module``'s classes against its ``.pxd`` ([] if it has none)."""
        pxd = self.pxd(module)
        if pxd is None:
            return []
        py_path = dataplane.source(module, self.root)
        pxd_at, py_at = self.rel(pxd.path), self.rel(py_path)
        try:
            py = self.py(module)
        except (SyntaxError, ValueError) as exc:
            return [f"{py_at}: cannot read: {exc}"]
        problems: list[str] = []
        for name, decl in pxd.classes.items():
            where = f"{pxd_at}:{decl.line}: class {name}"
            cls = py.get(name)
            if cls is None:
                problems.append(f"{where}: declared in the .pxd, but {py_at} has no class {name}")
                continue
            # the bases: the .pxd's are the .py's (by their last name)
            if [b.rpartition(".")[2] for b in decl.bases] != cls.bases:
                problems.append(
                    f"{where}: bases {decl.bases} in the .pxd, {cls.bases} in {py_at}:{cls.line}"
                )
            inherited: dict[str, tuple[str, str]] = {}  # attribute -> (base, its .pxd)
            if decl.bases and self.resolve(module, decl.bases[0]) is None:
                problems.append(
                    f"{where}: base {decl.bases[0]} is no class of this .pxd, nor cimported "
                    "from another module's .pxd"
                )
            properties = set(cls.properties)
            for base_module, base in self.ancestors(module, decl):
                base_pxd = self.pxd(base_module)
                base_at = self.rel(base_pxd.path) if base_pxd is not None else base_module
                for attr in base.attrs:
                    inherited.setdefault(attr, (base.name, base_at))
                base_py = self.py(base_module).get(base.name)
                if base_py is not None:
                    properties |= base_py.properties
            # 2. the .pxd's attributes are the __slots__, a class's own only
            for attr, line in decl.attrs.items():
                if attr in inherited:
                    base_name, base_at = inherited[attr]
                    problems.append(
                        f"{pxd_at}:{line}: class {name}: attribute {attr} is declared again "
                        f"(already in its base {base_name}, {base_at})"
                    )
            if cls.slots is not None:
                for attr in sorted(decl.attrs.keys() - cls.slots.keys()):
                    problems.append(
                        f"{pxd_at}:{decl.attrs[attr]}: class {name}: attribute {attr} is "
                        f"declared in the .pxd but not in __slots__ ({py_at}:{cls.line})"
                    )
                for attr in sorted(cls.slots):
                    if attr in inherited:
                        base_name, base_at = inherited[attr]
                        problems.append(
                            f"{py_at}:{cls.slots[attr]}: class {name}: attribute {attr} in "
                            f"__slots__ is its base {base_name}'s ({base_at}): list only its own"
                        )
                    elif attr not in decl.attrs:
                        problems.append(
                            f"{py_at}:{cls.slots[attr]}: class {name}: attribute {attr} in "
                            f"__slots__ is not declared in {pxd_at} (class {name}, line "
                            f"{decl.line})"
                        )
            # 3. every self.X assigned is an attribute of the class or of a base
            for attr, line in sorted(cls.assigned.items()):
                if attr in decl.attrs or attr in inherited or attr in properties:
                    continue
                if cls.slots is not None and attr in cls.slots:
                    continue  # (reported above: in __slots__, not in the .pxd)
                problems.append(
                    f"{py_at}:{line}: class {name}: self.{attr} is assigned but attribute "
                    f"{attr} is not declared in {pxd_at} (class {name}, line {decl.line}) nor in "
                    "a base's .pxd: the compiled class raises AttributeError"
                )
        return problems


MODULES = [
    name
    for name in dataplane.COMPILED_MODULES
    if dataplane.source(name).with_suffix(".pxd").exists()
]


def test_compiled_modules_have_pxd_files_with_attributes() -> None:
    # (the test below would pass vacuously if it found no .pxd, or read no attribute from one)
    assert MODULES, "no compiled module has a .pxd"
    checker = Checker()
    attrs = [
        attr
        for name in MODULES
        for pxd in [checker.pxd(name)]
        if pxd is not None
        for cls in pxd.classes.values()
        for attr in cls.attrs
    ]
    assert attrs, "no attribute read from any .pxd"


@pytest.mark.parametrize("module", MODULES)
def test_pxd_attributes_match_the_source(module: str) -> None:
    problems = Checker().check(module)
    assert not problems, f"{module}: the .pxd and the .py disagree:\n" + "\n".join(problems)


BASE_PXD = """\
cimport cython


cdef class Sink:
    cdef public bint ok
    cpdef on_body(self, body)
"""
BASE_PY = """\
class Sink:
    __slots__ = ("ok",)

    def __init__(self) -> None:
        self.ok = True

    @property
    def level(self) -> int:
        return 0

    @level.setter
    def level(self, value: int) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        pass
"""
MOD_PXD = """\
cimport cython

from pkg.base cimport (
    Sink,
)


cdef class Later


@cython.final
cdef class Good(Sink):
    cdef public long long count
    cdef public object extra_in_pxd  # not in __slots__
    @cython.locals(
        n=Py_ssize_t,
    )
    cpdef on_body(self, body)
    cdef inline void _add(self, double now)


cdef class Later:
    cdef public Good good


cdef class Nowhere:
    cdef public int x
"""
MOD_PY = """\
from pkg.base import Sink


class Good(Sink):
    __slots__ = ("count", "extra_in_slots")
    label: str  # a class-level annotation: no attribute

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ok = False  # the base's
        self.level = 3  # the base's property
        self.forgotten: int = 1

    def on_body(self, body: bytes) -> None:
        self.count += len(body)

    def _add(self, now: float) -> None:
        self.also_forgotten = now


class Later:
    __slots__ = ("good", "ok")

    def __init__(self, good: Good) -> None:
        self.good = good


class PurePython:  # not in the .pxd: anything goes
    def __init__(self) -> None:
        self.anything = 1
"""


def test_the_checker_reports_each_kind_of_mismatch(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name, text in {
        "base.pxd": BASE_PXD,
        "base.py": BASE_PY,
        "mod.pxd": MOD_PXD,
        "mod.py": MOD_PY,
    }.items():
        (pkg / name).write_text(text)
    checker = Checker(tmp_path)
    assert checker.check("pkg.base") == []
    problems = checker.check("pkg.mod")
    expected = [
        ("pkg/mod.pxd:", "class Good: attribute extra_in_pxd is declared in the .pxd but not"),
        ("pkg/mod.py:5:", "class Good: attribute extra_in_slots in __slots__ is not declared"),
        ("pkg/mod.py:13:", "class Good: self.forgotten is assigned but attribute forgotten"),
        ("pkg/mod.py:19:", "class Good: self.also_forgotten is assigned but attribute"),
        ("pkg/mod.py:23:", "class Later: attribute ok in __slots__ is not declared"),
        ("pkg/mod.pxd:26:", "class Nowhere: declared in the .pxd, but pkg/mod.py has no class"),
    ]
    for at, what in expected:
        assert any(p.startswith(at) and what in p for p in problems), (at, what, problems)
    assert len(problems) == len(expected), problems


def test_the_checker_follows_a_base_declared_in_another_pxd(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "base.pxd").write_text(BASE_PXD)
    (pkg / "base.py").write_text(BASE_PY)
    (pkg / "mod.pxd").write_text(
        "from pkg cimport base\n\n\ncdef class Sub(base.Sink):\n    cdef public bint ok\n"
    )
    (pkg / "mod.py").write_text(
        "from pkg import base\n\n\nclass Sub(base.Sink):\n    __slots__ = ('ok', 'x')\n\n"
        "    def __init__(self) -> None:\n        self.ok = True\n        self.x = 1\n"
    )
    problems = Checker(tmp_path).check("pkg.mod")
    expected = [
        "pkg/mod.pxd:5: class Sub: attribute ok is declared again (already in its base Sink, "
        "pkg/base.pxd)",
        "pkg/mod.py:5: class Sub: attribute ok in __slots__ is its base Sink's (pkg/base.pxd)",
        "pkg/mod.py:5: class Sub: attribute x in __slots__ is not declared in pkg/mod.pxd",
    ]
    for what in expected:
        assert any(p.startswith(what) for p in problems), (what, problems)
    assert len(problems) == len(expected), problems
    assert not any("self.x" in p for p in problems)  # (x is in __slots__: reported once)

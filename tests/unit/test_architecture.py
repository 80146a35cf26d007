"""The shape of the package (docs: design.md, "Shape of the code"), checked from its source with `ast`.

The package's modules may not import each other in a circle, may not import another module's private
(`_name`) names, may not reach into another object's private attributes (`other._name`; `self._x` and
`cls._x` are a class's own), and stay under MAX_LINES lines (lm.py, the model checker, excepted). The
checker runs on the real package and, below, on tiny packages made here, so that each kind of
violation it reports is shown to be caught.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "autoresearch"
MAX_LINES = 600
LONG_ALLOWED = {"lm"}  # autoresearch/lm.py: the saved-model checker, one concern at its length
# Private attributes of other libraries' objects that have no public spelling: (module, attribute) -> why.
ALLOWED_REACHES = {("lm", "_schema"): "torch's OpOverload keeps an operator's schema (mutability, arguments) "
                                      "only there, and the checker must read it"}


# --- the checker

@dataclass
class Module:
    name: str  # dotted, without the package: "loop", "run.session"
    path: Path
    tree: ast.Module
    lines: int
    is_package: bool  # an __init__.py: its relative imports start from itself


@dataclass
class Report:
    cycles: list[list[str]] = field(default_factory=list)
    private_imports: list[str] = field(default_factory=list)
    private_reaches: list[str] = field(default_factory=list)
    long_modules: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return ([f"import circle: {' -> '.join(cycle)}" for cycle in self.cycles] +
                [f"private import: {found}" for found in self.private_imports] +
                [f"private attribute reached: {found}" for found in self.private_reaches] +
                [f"module too long: {found}" for found in self.long_modules])


def load_modules(root: Path) -> dict[str, Module]:
    """Every module of the package at `root`, by dotted name inside it ("" is the package's __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).with_suffix("")
        parts = list(relative.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        text = path.read_text()
        modules[".".join(parts)] = Module(".".join(parts), path, ast.parse(text, str(path)), len(text.splitlines()),
                                          is_package)
    return modules


def imported(module: Module, package: str, known: dict[str, Module]) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for each import of the package's own modules, anywhere in
    `module` (inside functions too): `import pkg.x`, `from pkg import x`, `from pkg.x import y`, relative ones."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    found.append((alias.name[len(package) + 1:], [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per dot past the first
                base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
                base = [part for part in base if part]
                if node.level > 1:
                    base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == package or (node.module or "").startswith(package + "."):
                target = node.module[len(package) + 1:]
            else:
                continue
            names = [alias.name for alias in node.names]
            submodules = [name for name in names if ".".join(filter(None, [target, name])) in known]
            if target in known and (target != "" or not submodules):
                found.append((target, [name for name in names if name not in submodules], node.lineno))
            for name in submodules:  # `from pkg import x` where x is a module: an import of x
                found.append((".".join(filter(None, [target, name])), [], node.lineno))
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as a chain that starts and ends at its smallest module (Tarjan's strongly
    connected components, then one shortest circle through each component's smallest module per neighbour)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursive: a package's import graph is shallow
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        if len(component) == 1:
            [only] = component
            if only in graph.get(only, ()):
                cycles.append([only, only])
            continue
        start = min(component)
        seen_cycles = set()
        for first in sorted(graph[start] & component):
            path = shortest_path(graph, first, start, component)
            cycle = [start, *path]
            key = tuple(cycle)
            if key not in seen_cycles:
                seen_cycles.add(key)
                cycles.append(cycle)
    return sorted(cycles)


def shortest_path(graph: dict[str, set[str]], source: str, target: str, within: set[str]) -> list[str]:
    previous = {source: None}
    queue = [source]
    while queue:
        node = queue.pop(0)
        if node == target:
            break
        for other in sorted(graph.get(node, ())):
            if other in within and other not in previous:
                previous[other] = node
                queue.append(other)
    path, node = [], target
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def external_modules(module: Module, package: str) -> set[str]:
    """Names bound to modules from outside the package (`import os`, `import torch as t`): their private
    names (os._exit, sys._getframe) are those libraries' own spelling, not a reach into an object."""
    names = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != package:
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def check_package(root: Path, max_lines: int = MAX_LINES, long_allowed: frozenset | set = frozenset(),
                  allowed_reaches: dict | None = None) -> Report:
    package = root.name
    modules = load_modules(root)
    report = Report()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    shown = {name: f"{package}.{name}" if name else package for name in modules}
    found_imports: list[str] = []
    found_reaches: list[str] = []
    for module in modules.values():
        where = module.path.relative_to(root.parent)
        for target, names, line in imported(module, package, modules):
            if target != module.name:
                graph[module.name].add(target)
            for name in names:
                if is_private(name) and target != module.name:
                    report.private_imports.append((line, f"{where}:{line} imports {name} from {shown[target]}"))
        libraries = external_modules(module, package)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and (owner.id in ("self", "cls") or owner.id in libraries):
                    continue
                if (module.name, node.attr) in (allowed_reaches or {}):
                    continue
                report.private_reaches.append((node.lineno, f"{where}:{node.lineno} {ast.unparse(node)}"))
        if module.lines > max_lines and module.name not in long_allowed:
            report.long_modules.append(f"{where} has {module.lines} lines (at most {max_lines})")
        report.private_imports = [text for _, text in sorted(report.private_imports)]  # by module, then line
        report.private_reaches = [text for _, text in sorted(report.private_reaches)]
        found_imports.extend(report.private_imports)
        found_reaches.extend(report.private_reaches)
        report.private_imports, report.private_reaches = [], []
    report.private_imports, report.private_reaches = found_imports, found_reaches
    report.cycles = [[shown[name] for name in cycle] for cycle in find_cycles(graph)]
    return report


# --- the package itself

def test_the_package_keeps_its_shape():
    report = check_package(PACKAGE, MAX_LINES, LONG_ALLOWED, ALLOWED_REACHES)
    violations = report.violations()
    assert not violations, f"{len(violations)} violations of the package's shape:\n" + "\n".join(violations)


# --- the checker, on tiny packages made here

def make_package(root: Path, files: dict[str, str], name: str = "pkg") -> Path:
    package = root / name
    for relative, text in {"__init__.py": "", **files}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_clean_package_has_no_violation(tmp_path):
    package = make_package(tmp_path, {"a.py": "from pkg import b\nfrom pkg.b import VALUE\n\n\nclass A:\n"
                                              "    def __init__(self):\n        self._x = b.VALUE\n"
                                              "    def f(self):\n        return self._x, type(self).__name__\n",
                                      "b.py": "VALUE = 1\n"})
    assert check_package(package).violations() == []


@pytest.mark.parametrize("a_imports", ["from pkg import b", "import pkg.b", "from pkg.b import f", "from . import b",
                                       "from .b import f", "def late():\n    from pkg.b import f\n    return f"])
def test_a_circle_is_found_however_it_is_imported(tmp_path, a_imports):
    package = make_package(tmp_path, {"a.py": a_imports + "\n",
                                      "b.py": "from pkg.a import g\n\n\ndef f():\n    pass\n"})
    report = check_package(package)
    assert report.cycles == [["pkg.a", "pkg.b", "pkg.a"]]
    assert report.violations() == ["import circle: pkg.a -> pkg.b -> pkg.a"]


def test_a_longer_circle_reads_as_a_chain(tmp_path):
    package = make_package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "from pkg import c\n",
                                      "c.py": "def f():\n    import pkg.a\n", "d.py": "from pkg import a\n"})
    assert check_package(package).cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_a_circle_through_a_subpackage_with_relative_imports(tmp_path):
    package = make_package(tmp_path, {"run/__init__.py": "", "run/session.py": "from .scheduler import S\n",
                                      "run/scheduler.py": "from ..keep import decide\n",
                                      "keep.py": "from pkg.run.session import Session\n"})
    assert check_package(package).cycles == [["pkg.keep", "pkg.run.session", "pkg.run.scheduler", "pkg.keep"]]


def test_a_private_name_imported_from_another_module_is_found(tmp_path):
    package = make_package(tmp_path, {"a.py": "from pkg.b import _helper, __version__, public\n",
                                      "b.py": "def _helper():\n    pass\n\n\npublic = __version__ = 1\n",
                                      "c.py": "def f():\n    from .b import _other\n"})
    assert check_package(package).private_imports == ["pkg/a.py:1 imports _helper from pkg.b",
                                                      "pkg/c.py:2 imports _other from pkg.b"]


def test_a_private_attribute_of_another_object_is_found_and_self_and_cls_are_not(tmp_path):
    code = ("import os\n"
            "import torch as t\n"
            "from pkg import b\n"
            "class Scheduler:\n"
            "    def __init__(self, loop):\n"
            "        self.loop = loop\n"
            "        self._mine = 1\n"
            "    @classmethod\n"
            "    def make(cls):\n"
            "        return cls._default, cls.__name__\n"
            "    def step(self):\n"
            "        self.loop._journal.write()\n"
            "        return other._state, self.__class__, os._exit, t._ops, b._hidden\n")
    package = make_package(tmp_path, {"scheduler.py": code, "b.py": "_hidden = 1\n"})
    assert check_package(package).private_reaches == ["pkg/scheduler.py:12 self.loop._journal",
                                                      "pkg/scheduler.py:13 b._hidden",
                                                      "pkg/scheduler.py:13 other._state"]
    assert check_package(package, allowed_reaches={("scheduler", "_journal"): "why"}).private_reaches == [
        "pkg/scheduler.py:13 b._hidden", "pkg/scheduler.py:13 other._state"]


def test_a_long_module_is_found_unless_allowed(tmp_path):
    package = make_package(tmp_path, {"long.py": "x = 1\n" * 11, "short.py": "x = 1\n" * 10, "lm.py": "x = 1\n" * 20})
    assert check_package(package, max_lines=10, long_allowed={"lm"}).long_modules == [
        "pkg/long.py has 11 lines (at most 10)"]


def test_every_kind_of_violation_is_listed_in_one_message(tmp_path):
    package = make_package(tmp_path, {"a.py": "from pkg.b import _x\n", "b.py": "import pkg.a\n_x = 1\n",
                                      "c.py": "def f(o):\n    return o._y\n" + "\n" * 700})
    assert check_package(package).violations() == ["import circle: pkg.a -> pkg.b -> pkg.a",
                                                   "private import: pkg/a.py:1 imports _x from pkg.b",
                                                   "private attribute reached: pkg/c.py:2 o._y",
                                                   "module too long: pkg/c.py has 702 lines (at most 600)"]

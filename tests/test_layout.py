"""The layout of portwatch/ as a test: no import circle, pure packages stay pure, layers hold.

Everything here reads the source with :mod:`ast`; nothing of portwatch is
imported, so a broken module cannot hide a violation and a layering mistake
cannot be masked by import order.

Which imports count: every ``import`` and ``from ... import`` statement
anywhere in a module, at module level, inside functions (lazy imports) and
under ``if TYPE_CHECKING:``. A lazy import still runs, and a lazy or
type-only import used to break a circle only hides the dependency that the
layering forbids, so both count as edges. ``from package import name`` is an
edge to the submodule ``package.name`` when that module exists, otherwise to
the package itself; a package's ``__init__`` importing its submodules is an
edge like any other. Importing ``a.b`` also runs ``a/__init__``, but that
implicit edge to the parent package is not counted: a submodule that names
its parent explicitly (``from portwatch.detect import ...`` inside
``portwatch/detect/``) is. Imports by name at run time count too: in a module
that imports :mod:`importlib` or :mod:`portwatch.lazy`, a string constant that
is the dotted name of a portwatch module and is either a value of a dict literal
(the table of a lazy ``__getattr__``, a registry of modules) or the argument of
``import_module`` is an edge to that module (a logger name is not).

See docs/architecture.md for the layering these tests enforce.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "portwatch"
ROOT = "portwatch"

MAX_LINES = 500
LONG_MODULES_ALLOWED = {"portwatch.collect.netlink"}  # the sock_diag parser

# Pure code: data and decisions, no I/O. Checked over the transitive closure
# of its imports within portwatch, not just its own import lines.
PURE = ("portwatch.model", "portwatch.detect", "portwatch.alerts.rules",
        "portwatch.alerts.notification")
# (pathlib and urllib.parse are not here: config.types holds file paths as Path values and
# config.grammar splits URLs; importing either does no I/O, and no pure module calls a
# Path method that does.)
IO_MODULES = {"os", "socket", "logging", "time", "subprocess", "threading", "yaml", "psutil",
              "http", "ssl", "random", "select", "selectors", "shutil", "tempfile", "io", "fcntl"}
IMPURE_PORTWATCH = ("portwatch.collect", "portwatch.daemon", "portwatch.web", "portwatch.scan",
                    "portwatch.watch", "portwatch.cli")
CONFIG_PURE_PART = "portwatch.config.types"
# The standard-library-only helpers every module may import.
ALWAYS_ALLOWED = (ROOT, "portwatch.lazy")

MODEL = "portwatch.model"
CONFIG_PURE = ("portwatch.config.types", "portwatch.config.grammar", "portwatch.config.schema")
EVERYTHING_BELOW_DAEMON = (MODEL, "portwatch.collect", "portwatch.detect", "portwatch.config",
                           "portwatch.alerts", "portwatch.output", "portwatch.scan",
                           "portwatch.web", "portwatch.jsonfile")

# The layering of the redesign: who may import whom. The key is the importing
# module or package (the longest matching key applies); the value is every
# prefix it may import. Importing the root package (``__version__``) is always
# allowed. A module that matches no key fails: add it to this table.
LAYERS: dict[str, tuple[str, ...]] = {
    "portwatch": (),  # the root __init__ only; matched exactly
    "portwatch.__main__": ("portwatch.cli",),
    "portwatch.model": (MODEL,),
    "portwatch.collect": (MODEL, "portwatch.collect"),
    "portwatch.detect": (MODEL, CONFIG_PURE_PART, "portwatch.detect"),
    "portwatch.config.types": (MODEL, *CONFIG_PURE),
    "portwatch.config.grammar": (MODEL, *CONFIG_PURE),
    "portwatch.config.schema": (MODEL, *CONFIG_PURE),
    # loading (the YAML entry point) learns the sink shapes from the sink registry; the
    # allowed values of `source` come from the socket source registry (issue 8)
    "portwatch.config": (MODEL, "portwatch.config", "portwatch.alerts.sinks",
                         "portwatch.collect.sources"),
    "portwatch.alerts.rules": (MODEL, CONFIG_PURE_PART, "portwatch.alerts.rules",
                               "portwatch.alerts.notification"),
    "portwatch.alerts.notification": (MODEL, CONFIG_PURE_PART, "portwatch.alerts.rules",
                                      "portwatch.alerts.notification"),
    # a sink owns its config shape: it may use the pure config parts, not loading; the
    # Alertmanager alert names come from the detector registry (issue 8)
    "portwatch.alerts.sinks": (MODEL, *CONFIG_PURE, "portwatch.alerts", "portwatch.jsonfile",
                               "portwatch.detect.registry"),
    "portwatch.alerts": (MODEL, "portwatch.config", "portwatch.alerts", "portwatch.jsonfile"),
    "portwatch.jsonfile": (MODEL,),
    "portwatch.lazy": (),
    "portwatch.output": (MODEL, CONFIG_PURE_PART, "portwatch.output"),
    "portwatch.scan": (MODEL, "portwatch.collect", "portwatch.detect", "portwatch.config"),
    "portwatch.web": (MODEL, "portwatch.config", "portwatch.output", "portwatch.web"),
    "portwatch.daemon": (*EVERYTHING_BELOW_DAEMON, "portwatch.daemon"),
    "portwatch.watch": (*EVERYTHING_BELOW_DAEMON, "portwatch.watch"),
    "portwatch.cli": (*EVERYTHING_BELOW_DAEMON, "portwatch.daemon", "portwatch.watch", "portwatch.cli"),
}


@dataclass(frozen=True)
class Import:
    """One import statement of a module, resolved to what it names."""

    line: int
    target: str  # the portwatch module it reaches, or the external top-level name
    internal: bool  # True when target is a module of portwatch


@dataclass(frozen=True)
class Module:
    """One module of portwatch/ as read from its source."""

    name: str
    path: Path
    tree: ast.Module
    lines: int

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def where(self) -> str:
        return str(self.path.relative_to(REPO))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules() -> dict[str, Module]:
    """Every module under portwatch/, by dotted name, parsed."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = _module_name(path)
        modules[name] = Module(name, path, ast.parse(text, str(path)), len(text.splitlines()))
    return modules


def _resolve(base: str, names: list[str], known: dict[str, Module]) -> list[str]:
    """The portwatch modules ``from base import names`` reaches."""
    reached = []
    for name in names:
        sub = f"{base}.{name}"
        reached.append(sub if sub in known else base)
    return sorted(set(reached))


def imports_of(module: Module, known: dict[str, Module]) -> list[Import]:
    """Every import of ``module`` (module level, lazy, TYPE_CHECKING), resolved."""
    found: list[Import] = []
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    target = alias.name
                    while target not in known:  # `import portwatch.x.Name` is not valid, but be safe
                        target = target.rpartition(".")[0]
                    found.append(Import(node.lineno, target, True))
                else:
                    found.append(Import(node.lineno, alias.name.split(".")[0], False))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base == ROOT or base.startswith(ROOT + "."):
                for target in _resolve(base, [a.name for a in node.names], known):
                    found.append(Import(node.lineno, target, True))
            elif base != "__future__":
                found.append(Import(node.lineno, base.split(".")[0], False))
    external = {i.target for i in found if not i.internal}
    if "importlib" in external or any(i.target == "portwatch.lazy" for i in found):
        named: list[ast.expr] = []
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Dict):
                named += node.values
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args):
                named.append(node.args[0])
        for value in named:
            if (isinstance(value, ast.Constant) and isinstance(value.value, str)
                    and value.value in known and value.value != module.name):
                found.append(Import(value.lineno, value.value, True))
    return sorted(set(found), key=lambda i: (i.line, i.target))


def _graph() -> tuple[dict[str, Module], dict[str, list[Import]]]:
    modules = read_modules()
    return modules, {name: imports_of(m, modules) for name, m in modules.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _edge_line(graph: dict[str, list[Import]], source: str, target: str) -> int:
    return next(i.line for i in graph[source] if i.internal and i.target == target)


def find_circles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """One circle (a list of modules, first repeated last) per strongly connected component."""
    edges = {name: sorted({i.target for i in imps if i.internal}) for name, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(node: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, []):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, []):
                components.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            strongconnect(name)

    circles = []
    for component in components:
        members = set(component)
        start = component[0]
        # shortest path back to start inside the component (breadth first)
        came_from: dict[str, str] = {}
        queue = [start]
        found = None
        while queue and found is None:
            node = queue.pop(0)
            for nxt in edges[node]:
                if nxt == start:
                    found = node
                    break
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    queue.append(nxt)
        assert found is not None
        chain = [found]
        while chain[-1] != start:
            chain.append(came_from[chain[-1]])
        circles.append([*reversed(chain), start])
    return circles


def _describe_circle(circle: list[str], graph: dict[str, list[Import]],
                     modules: dict[str, Module]) -> str:
    steps = [f"{a} -> {b} ({modules[a].where}:{_edge_line(graph, a, b)})"
             for a, b in zip(circle, circle[1:])]
    return "import circle:\n    " + "\n    ".join(steps)


def _closure_with_paths(start: str, graph: dict[str, list[Import]]) -> dict[str, list[str]]:
    """Every portwatch module ``start`` reaches, with one import chain leading to it."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for imp in graph[node]:
            if imp.internal and imp.target not in paths:
                paths[imp.target] = [*paths[node], imp.target]
                queue.append(imp.target)
    return paths


def _pure_modules(modules: dict[str, Module]) -> list[str]:
    return [name for name in modules if any(_within(name, p) for p in PURE)]


def purity_violations(modules: dict[str, Module], graph: dict[str, list[Import]]) -> list[str]:
    """What the pure packages reach (transitively within portwatch) that does I/O or is impure.

    Impure: a module of IO_MODULES, anything outside the standard library (pure code
    is standard library only), or a portwatch package of IMPURE_PORTWATCH or of config
    other than its pure part: config.types, and the grammar and schema it may import by
    the layering (those are walked like any module, so their own I/O is reported). A
    reached impure portwatch module is reported, not walked.
    """
    stdlib = set(sys.stdlib_module_names)
    problems: dict[str, str] = {}  # the problem -> the shortest chain of imports reaching it
    for start in _pure_modules(modules):
        for reached, chain in _closure_with_paths(start, graph).items():
            found = []
            if any(_within(reached, p) for p in IMPURE_PORTWATCH) or (
                    _within(reached, "portwatch.config")
                    and not any(_within(reached, p) for p in CONFIG_PURE)):
                found.append(f"pure code reaches {reached}")
            else:
                for imp in graph[reached]:
                    where = f"{modules[reached].where}:{imp.line}"
                    if imp.internal:
                        continue
                    if imp.target in IO_MODULES:
                        found.append(f"{where} imports {imp.target} (I/O)")
                    elif imp.target not in stdlib:
                        found.append(f"{where} imports {imp.target} (not the standard library)")
            via = " -> ".join(chain)
            for problem in found:
                if problem not in problems or len(via) < len(problems[problem]):
                    problems[problem] = via
    return [f"{problem}, reached by {via}" for problem, via in sorted(problems.items())]


def _rule_for(name: str) -> tuple[str, ...] | None:
    if name == ROOT:
        return LAYERS[ROOT]
    keys = [k for k in LAYERS if k != ROOT and _within(name, k)]
    return LAYERS[max(keys, key=len)] if keys else None


def layering_violations(modules: dict[str, Module], graph: dict[str, list[Import]]) -> list[str]:
    """Every import of portwatch that the LAYERS table does not allow."""
    problems = []
    for name in sorted(modules):
        allowed = _rule_for(name)
        if allowed is None:
            problems.append(f"{modules[name].where}: {name} is in no layer of LAYERS")
            continue
        for imp in graph[name]:
            if imp.internal and imp.target not in ALWAYS_ALLOWED and not any(_within(imp.target, p) for p in allowed):
                problems.append(f"{modules[name].where}:{imp.line}: {name} imports {imp.target}"
                                f" (allowed: {', '.join(allowed) or 'nothing of portwatch'})")
    return problems


# ------------------------------------------------------------------ the checker checks itself


def test_the_import_reader_sees_lazy_type_checking_and_relative_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .sibling import Name\n"
        "import os.path\n"
        "if TYPE_CHECKING:\n"
        "    from portwatch.model import Finding\n"
        "def f() -> None:\n"
        "    import portwatch.model.text\n"
    )
    path = PACKAGE / "pkg" / "mod.py"
    known = {n: Module(n, path, ast.parse(""), 0)
             for n in ("portwatch.pkg", "portwatch.pkg.sibling", "portwatch.model",
                       "portwatch.model.text")}
    module = Module("portwatch.pkg.mod", path, ast.parse(source), 8)
    assert [(i.line, i.target, i.internal) for i in imports_of(module, known)] == [
        (1, "typing", False),
        (2, "portwatch.pkg.sibling", True),
        (3, "portwatch.pkg.sibling", True),
        (4, "os", False),
        (6, "portwatch.model", True),
        (8, "portwatch.model.text", True),
    ]


def test_the_import_reader_sees_module_names_given_to_the_lazy_loader() -> None:
    source = ("from portwatch.lazy import lazy_getattr\n"
              "_NAMES = {'load_config': 'portwatch.config.loading', 'x': 'not a module'}\n"
              "log = getLogger('portwatch.config')\n")
    path = PACKAGE / "config" / "__init__.py"
    known = {n: Module(n, path, ast.parse(""), 0)
             for n in ("portwatch.lazy", "portwatch.config", "portwatch.config.loading")}
    module = Module("portwatch.config", path, ast.parse(source), 3)
    assert [(i.line, i.target) for i in imports_of(module, known)] == [
        (1, "portwatch.lazy"), (2, "portwatch.config.loading")]


def test_the_circle_finder_reports_a_circle_and_nothing_for_a_chain() -> None:
    def imp(target: str) -> Import:
        return Import(1, target, True)

    assert find_circles({"a": [imp("b")], "b": [imp("c")], "c": []}) == []
    assert find_circles({"a": [imp("b")], "b": [imp("c")], "c": [imp("a")]}) == [["a", "b", "c", "a"]]
    assert find_circles({"a": [imp("a")]}) == [["a", "a"]]


def test_the_layering_table_covers_a_module_of_every_package() -> None:
    modules = read_modules()
    assert len(modules) > 20 and _pure_modules(modules)  # the walk found the code
    assert _rule_for("portwatch.detect.selfconnect") == LAYERS["portwatch.detect"]
    assert _rule_for("portwatch.alerts.sinks.webhook") == LAYERS["portwatch.alerts.sinks"]
    assert _rule_for("portwatch.config.loading") == LAYERS["portwatch.config"]
    assert _rule_for("portwatch.unknown") is None


# ------------------------------------------------------------------ the layout of portwatch/


def test_there_is_no_import_circle_in_portwatch() -> None:
    modules, graph = _graph()
    circles = [_describe_circle(c, graph, modules) for c in find_circles(graph)]
    assert not circles, "\n".join(circles)


def test_pure_packages_reach_no_io_and_no_impure_package() -> None:
    modules, graph = _graph()
    problems = purity_violations(modules, graph)
    assert not problems, "\n".join(problems)


def test_every_import_follows_the_layering() -> None:
    modules, graph = _graph()
    problems = layering_violations(modules, graph)
    assert not problems, "\n".join(problems)


def test_every_package_has_a_docstring_saying_its_job() -> None:
    missing = [m.where for m in read_modules().values()
               if m.is_package and len((ast.get_docstring(m.tree) or "").split()) < 5]
    assert not missing, "packages without a docstring saying their job: " + ", ".join(missing)


def test_no_module_is_over_500_lines_except_the_netlink_parser() -> None:
    long = [f"{m.where}: {m.lines} lines" for m in read_modules().values()
            if m.lines > MAX_LINES and m.name not in LONG_MODULES_ALLOWED]
    assert not long, "\n".join(long)

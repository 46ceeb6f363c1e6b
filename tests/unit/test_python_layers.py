"""The Python layers: which part of the package may import which, and no import circle.

LAYERS is the one table of the package's layers, bottom up: a folder each, plus the modules at the top
of the package (the vocabulary at the bottom, the command line at the top). A module may import its own
layer and the layers below it, never one above; no set of modules may import each other round. Every
import counts: relative or absolute, at the top of a module or inside a function, under TYPE_CHECKING or
in a try. The C core's layers are tests/core/test_layers.py's; docs/architecture.md's layer table follows
this one (test_the_architecture_table_lists_these_layers_in_this_order).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vhostsplice"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Bottom up: (layer, what it holds: "folder/" or a module at the top of the package).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("C core", ("_core_build", "_vs_core")),          # _vs_core: compiled from _core/ by _core_build.py
    ("vocabulary", ("__init__", "spec", "errors")),   # the spec's numbers, the errors and exit codes
    ("host side", ("host/",)),
    ("wire", ("vhostuser/",)),
    ("device", ("device/",)),
    ("confinement", ("sandbox/",)),
    ("worker", ("worker/",)),
    ("serve", ("serve/",)),
    ("test kit", ("testing/",)),
    ("tools", ("tools/",)),
    ("command line", ("cli/", "__main__")),
)
COMPILED = {"_vs_core", "sandbox._seccomp_abi"}        # built at install: no source to read, no imports
CORE_MODULE, CORE_USERS = "_vs_core", {"device.datapath"}   # the only Python that touches the C core


def modules(package: Path) -> dict[str, Path]:
    """Module name inside the package ('device.backend'; a package by its folder, 'host') -> file."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom names, inside the package ('' for the package), or None."""
    if not node.level:
        mod = node.module or ""
        return mod[len("vhostsplice."):] if mod.startswith("vhostsplice.") else "" if mod == "vhostsplice" else None
    here = [] if name == "__init__" else name.split(".")
    pkg = here if is_pkg else here[:-1]
    if node.level - 1 > len(pkg):
        return None
    base = pkg[: len(pkg) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from . import x` of a module counts as that module)."""
    mods = modules(package)
    known = set(mods) | COMPILED
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name[len("vhostsplice."):] for a in node.names if a.name.startswith("vhostsplice.")]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                if base is None:
                    continue
                subs = [f"{base}.{a.name}".lstrip(".") for a in node.names]
                targets = [s if s in known else (base or "__init__") for s in subs]
            else:
                continue
            for t in targets:
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t != name:
                    graph[name].add(t)
    return graph


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index in LAYERS of MODULE's layer: its folder's, or its own as a module at the top."""
    first = module.split(".")[0]
    for i, (_layer, holds) in enumerate(layers):
        if module in holds or f"{first}/" in holds:
            return i
    return None


def upward(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    out = []
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            if layer_of(t, layers) > layer_of(mod, layers):
                out.append(f"{mod} ({layers[layer_of(mod, layers)][0]}) imports {t} "
                           f"({layers[layer_of(t, layers)][0]})")
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other, directly or round others (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    g = imports(PACKAGE)
    assert sum(map(len, g.values())) > 100, "hardly an import found: the parser is broken"
    return g


def test_every_module_is_in_a_layer_and_every_layer_exists(graph):
    assert [m for m in graph if layer_of(m) is None] == [], "a module outside LAYERS: add its folder there"
    for _layer, holds in LAYERS:
        for entry in holds:
            path = PACKAGE / entry if entry.endswith("/") else PACKAGE / f"{entry}.py"
            assert entry in COMPILED or path.exists(), f"LAYERS names {entry}, which is not in the package"


def test_no_module_imports_a_layer_above_its_own(graph):
    assert upward(graph) == []


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_only_the_datapath_imports_the_c_core(graph):
    assert {m for m, targets in graph.items() if CORE_MODULE in targets} == CORE_USERS


def test_the_checks_catch_a_planted_upward_import_and_circle(tmp_path):
    """The checks themselves, on a package made here: a function-level relative import of a higher layer,
    and two modules of one layer that import each other (one absolutely, one relatively)."""
    pkg = tmp_path / "vhostsplice"
    files = {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from ..high import c\n    return c\n",
        "low/b.py": "from . import a\nimport vhostsplice.low.d as d\n",
        "low/d.py": "from .b import x\n",
        "high/__init__.py": "",
        "high/c.py": "from ..low.a import f\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    layers = (("root", ("__init__",)), ("low", ("low/",)), ("high", ("high/",)))
    g = imports(pkg)
    assert g["low.a"] == {"high.c"} and g["low.b"] == {"low.a", "low.d"} and g["high.c"] == {"low.a"}
    assert upward(g, layers) == ["low.a (low) imports high.c (high)"]
    assert sorted(circles(g)) == [["high.c", "low.a"], ["low.b", "low.d"]]


def test_the_architecture_table_lists_these_layers_in_this_order():
    """docs/architecture.md's table under "## The layers" names each layer of LAYERS (top down) in its
    first column and everything the layer holds in its second."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    rows = rows[: len(LAYERS)]
    assert [name.strip() for name, _py in rows] == [layer for layer, _holds in reversed(LAYERS)]
    for (_name, py), (layer, holds) in zip(rows, reversed(LAYERS)):
        named = set(re.findall(r"`([^`]+)`", py))
        wanted = {h if h.endswith("/") else f"{h}.py" for h in holds if h not in COMPILED}
        assert wanted <= named, f"the {layer} row of docs/architecture.md misses {sorted(wanted - named)}"

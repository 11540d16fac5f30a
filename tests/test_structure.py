"""The package's shape, checked from the source (AST only, nothing imported): the modules of
``recovery`` import each other without cycles, and no module reaches for another module's
private names.

Every ``import``/``from … import`` counts, wherever it sits (module level, inside a function,
under ``if TYPE_CHECKING:``): a cycle hidden in a function body is still two modules that cannot be
understood, tested or moved one without the other. An edge goes to the module the statement
names (``from recovery.engine import schema`` → ``recovery.engine.schema``;
``from recovery.report import report`` → the package ``recovery.report``), never implicitly to
the parent packages Python also initialises.

``recovery/sample/gestima_app`` is the sample *application* shipped as package data (an Alembic
project with its own ``env.py``), not a module of ``recovery``, and is left out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "recovery"
PACKAGE = "recovery"
NOT_OURS = (PACKAGE_DIR / "sample" / "gestima_app",)


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line``; ``names`` are the names a ``from`` import takes."""

    source: str
    target: str
    line: int
    names: tuple[str, ...] = ()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if any(path.is_relative_to(skip) for skip in NOT_OURS):
            continue
        found[module_name(path)] = path
    return found


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve_from(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module ``from <node.module> import …`` reads from (relative imports too)."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package(path) else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def edges_of(name: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every import of a ``recovery`` module that ``name`` makes, anywhere in its source."""
    tree = parse(path)
    edges: list[Edge] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    edges.append(Edge(name, alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            origin = resolve_from(node, name, path)
            if origin not in known:
                continue
            from_module = []
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                if submodule in known:
                    edges.append(Edge(name, submodule, node.lineno))
                else:
                    from_module.append(alias.name)
            if from_module:
                edges.append(Edge(name, origin, node.lineno, tuple(from_module)))
    return edges


def import_graph() -> tuple[dict[str, Path], list[Edge]]:
    known = modules()
    edges = [edge for name, path in known.items() for edge in edges_of(name, path, known)]
    return known, [edge for edge in edges if edge.target != edge.source]


def cycles(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    succ: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        succ[edge.source].append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def reexport(edge: Edge, known: dict[str, Path]) -> bool:
    """A package's ``__init__`` importing from one of its own submodules."""
    return is_package(known[edge.source]) and edge.target.startswith(edge.source + ".")


def private_imports(known: dict[str, Path], edges: list[Edge]) -> list[str]:
    """``from x import _name`` across modules, and ``import x`` / ``from p import x`` followed by
    ``x._name``: both couple a module to what another module keeps to itself."""
    found = []
    for edge in edges:
        if reexport(edge, known):
            continue
        for name in edge.names:
            if private(name):
                found.append(f"{edge.source}:{edge.line} imports {name} from {edge.target}")
        if private(edge.target.rsplit(".", 1)[-1]):
            found.append(f"{edge.source}:{edge.line} imports the private module {edge.target}")
    for name, path in known.items():
        found += private_attributes(name, path, known)
    return found


def private_attributes(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """``alias._name`` where ``alias`` is bound to one of our modules by an import."""
    tree = parse(path)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            origin = resolve_from(node, name, path)
            for alias in node.names:
                if f"{origin}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{origin}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            target = aliases.get(ast.unparse(node.value))
            if target is not None and target != name:
                found.append(f"{name}:{node.lineno} uses {target}.{node.attr}")
    return found


def describe(component: list[str], edges: list[Edge]) -> str:
    inside = set(component)
    lines = [
        f"  {edge.source}:{edge.line} -> {edge.target}"
        for edge in edges
        if edge.source in inside and edge.target in inside
    ]
    return " <-> ".join(component) + "\n" + "\n".join(sorted(set(lines)))


def test_the_graph_sees_the_package() -> None:
    """The checks below only mean something if the walk finds the modules and their imports:
    the pipeline imports the stages, and a function-level import counts."""
    known, edges = import_graph()
    expected = {
        "recovery.pipeline",
        "recovery.cli",
        "recovery.engine.schema",
        "recovery.model.outcome",
    }
    assert expected <= set(known)
    assert "recovery.sample.gestima_app.env" not in known
    targets = {edge.target for edge in edges if edge.source == "recovery.pipeline"}
    assert "recovery.bundle.extract" in targets
    assert len(edges) > 200


def test_cycle_finder_finds_cycles() -> None:
    """A three-module ring and a two-module pair are found; a chain is not a cycle."""
    edges = [
        Edge("a", "b", 1),
        Edge("b", "c", 1),
        Edge("c", "a", 1),
        Edge("d", "e", 1),
        Edge("e", "d", 1),
        Edge("e", "f", 1),
    ]
    assert sorted(cycles(list("abcdef"), edges)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles(list("abc"), [Edge("a", "b", 1), Edge("b", "c", 1)]) == []


def test_private_finder_finds_private_imports(tmp_path: Path) -> None:
    """``from x import _y`` and ``x._y`` are both found; dunders and own names are not."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from recovery.engine import schema\n"
        "from recovery.engine.schema import _hidden, __all__\n"
        "def f():\n    return schema._reflect_one\n",
        encoding="utf-8",
    )
    known = {**modules(), "recovery.mod": source}
    found = private_imports(known, edges_of("recovery.mod", source, known))
    assert any("imports _hidden from recovery.engine.schema" in line for line in found)
    assert any("uses recovery.engine.schema._reflect_one" in line for line in found)
    assert not any("__all__" in line for line in found)


def test_no_import_cycles() -> None:
    known, edges = import_graph()
    found = cycles(list(known), edges)
    assert not found, "import cycles between modules:\n" + "\n".join(
        describe(c, edges) for c in found
    )


def test_no_private_names_across_modules() -> None:
    known, edges = import_graph()
    found = private_imports(known, edges)
    assert not found, "private names used across modules:\n  " + "\n  ".join(sorted(found))


@pytest.mark.parametrize(
    "relative", ["from . import x", "from .x import y", "from ..engine import schema"]
)
def test_relative_imports_resolve(relative: str, tmp_path: Path) -> None:
    """Relative imports point where Python would look (the package, a sibling, an uncle)."""
    node = ast.parse(relative).body[0]
    assert isinstance(node, ast.ImportFrom)
    path = PACKAGE_DIR / "files" / "relink.py"
    origin = resolve_from(node, "recovery.files.relink", path)
    expected = {
        "from . import x": "recovery.files",
        "from .x import y": "recovery.files.x",
        "from ..engine import schema": "recovery.engine",
    }[relative]
    assert origin == expected

"""The package's import graph has no cycle.

Every ``import`` of a ``pipeline`` module counts, at module level and inside functions (a function-level
import only hides a cycle until the function runs); imports under ``if TYPE_CHECKING:`` do not, since they
never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Names of the ``pipeline`` modules that ``module`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pipeline.x import y`` counts ``pipeline.x``, and
    ``pipeline.x.y`` when ``y`` is a submodule)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        names = _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py")
        graph[name] = {n for n in names if n in files and n != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _strip_package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A submodule importing its own package's ``__init__`` is how Python imports it anyway (the parent runs
    first), so ``pipeline.heads.x -> pipeline.heads`` is not an edge that can close a cycle by itself."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_graph_sees_the_package():
    graph = import_graph()
    assert "pipeline.heads.base" in graph and "pipeline.cli.train" in graph
    assert "pipeline.errors" in graph["pipeline.store"]


def test_no_import_cycle():
    cycle = find_cycle(_strip_package_parents(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_backbone_identity_is_listed_in_one_module_only():
    """``pipeline.identity`` owns the list of identity settings: no other module spells it out again."""
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "identity.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if {"backbone", "weights", "pooling"} <= words:
                    spelled.append(f"{_module_name(path)}:{node.lineno}")
    assert not spelled, f"identity keys listed outside pipeline/identity.py: {spelled}"


def test_the_parts_folder_layout_has_one_owner():
    """Only ``pipeline.store_parts`` spells the manifest and shard file names."""
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "store_parts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in ("manifest.json", "shard-*.h5"):
                spelled.append(f"{_module_name(path)}:{node.lineno}")
    assert not spelled, f"parts-folder names spelled outside pipeline/store_parts.py: {spelled}"

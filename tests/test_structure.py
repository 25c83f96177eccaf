"""The shape of the code: the model zoo's modules import each other without a cycle.

Read from the source with ``ast`` (nothing is imported), counting the imports inside
functions too: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bench.models

MODELS_DIR = Path(bench.models.__file__).parent
PACKAGE = "bench.models"


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _targets(node: ast.AST, modules: set[str]) -> set[str]:
    """The modules of ``bench.models`` that an import statement imports."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level == 0:
        base = node.module or ""
    elif node.level == 1:  # relative to bench.models (every module here is directly in it)
        base = PACKAGE + (f".{node.module}" if node.module else "")
    else:  # from .. import x: outside the package
        return set()
    if base not in modules:
        return set()
    # `from . import timm_zoo` imports the submodule; `from . import create_model` the package.
    subs = {f"{base}.{a.name}" for a in node.names} & modules
    rest = [a for a in node.names if f"{base}.{a.name}" not in modules]
    return subs | ({base} if rest or not subs else set())


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of bench.models it imports anywhere in its source."""
    files = sorted(MODELS_DIR.glob("*.py"))
    modules = {_module_name(p) for p in files}
    graph = {}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        name = _module_name(path)
        graph[name] = {t for node in ast.walk(tree) for t in _targets(node, modules)} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert f"{PACKAGE}.weights" in graph[f"{PACKAGE}._registry"]  # imported inside create_model
    assert PACKAGE in graph[f"{PACKAGE}.cli"]  # `from . import get_model_spec, list_models`
    assert f"{PACKAGE}.torchvision_zoo" in graph[PACKAGE]  # `from . import torchvision_zoo as ...`


def test_the_model_zoo_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in bench.models: " + " -> ".join(cycle)


def test_shared_leaves_import_nothing_from_the_zoo():
    graph = import_graph()
    for leaf in ("_spec", "_layers", "weights"):
        assert graph[f"{PACKAGE}.{leaf}"] == set(), leaf

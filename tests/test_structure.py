"""The shape of the code, read from the source with ``ast`` (nothing is imported):

- only ``__init__`` and ``__main__`` at ``bench/``'s top level: every module lives in the package
  named by the noun it serves;
- no import cycle, counting the imports inside functions (a lazy import still ties two modules);
- imports follow the layers: a package imports only packages on its own layer or below it;
- no ``_private`` name imported from another package;
- no function over 60 lines, no module over 400.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bench

ROOT = Path(bench.__file__).parent

# The layers, lowest first: a package may import those on its own layer and below (data flows down
# this list: files -> split -> model -> training loop -> run folder -> results -> ensemble / predict
# -> report). ``bench`` itself (CONF_DIR, the version) is below everything; ``__main__`` modules are
# entry points, like cli.
LAYERS = [
    {"runs", "metrics"},
    {"models"},
    {"config"},
    {"data", "detection"},
    {"results"},
    {"training"},
    {"ensemble", "predict", "preflight"},
    {"protocols", "cascade"},
    {"report", "benchmark", "sweep", "deploy", "tune"},
    {"cli"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
ENTRY_LAYER = len(LAYERS) - 1
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(node: ast.AST, name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(module, names) an import statement imports, for modules of bench; a name that is a module
    (``from bench.runs import files``) counts as that module."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.split(".")[0] == "bench"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "bench":
        return []
    out, names = [], []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            out.append((sub, []))
        else:
            names.append(alias.name)
    if names or not out:
        out.append((base, names))
    return out


def import_graph() -> dict[str, dict[str, set[str]]]:
    """module -> {imported module of bench: the names imported from it}, imports anywhere in the source."""
    known = set(modules())
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in modules().items():
        edges: dict[str, set[str]] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target, names in _imported(node, name, path, known):
                while target not in known and "." in target:
                    target = target.rpartition(".")[0]
                if target in known and target != name:
                    edges.setdefault(target, set()).update(names)
        graph[name] = edges
    return graph


def find_cycle(graph) -> list[str] | None:
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


def package_of(module: str) -> str:
    """The top-level package of a module of bench (``bench`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bench"


def layer_of(module: str) -> int:
    if module == "bench":
        return -1
    if module.endswith(".__main__"):
        return ENTRY_LAYER
    return LAYER[package_of(module)]


# --------------------------------------------------------------------------- the checkers, checked
def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": set(), "c": set()}, "b": {"c": set()}, "c": {}}) is None


def test_the_graph_sees_function_level_relative_and_package_imports():
    graph = import_graph()
    assert "bench.models.weights" in graph["bench.models._registry"]  # imported inside create_model, relatively
    assert "bench.runs.files" in graph["bench.results.records"]  # `from bench.runs import files as run_files`
    assert "bench.runs" in graph["bench.training.run"]  # `from bench import runs`: the package
    assert "bench.models.torchvision_zoo" in graph["bench.models"]  # `from . import torchvision_zoo as ...`


# --------------------------------------------------------------------------- the rules
def test_nothing_but_init_and_main_at_the_top_level():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], top


def test_every_package_is_on_a_layer():
    packages = {package_of(m) for m in modules()} - {"bench", "__main__"}
    assert packages <= set(LAYER), packages - set(LAYER)


def test_no_import_cycle_counting_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_follow_the_layers():
    against = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
               for m, edges in import_graph().items() for t in edges if layer_of(t) > layer_of(m)]
    assert not against, "imports against the layer order:\n" + "\n".join(against)


def test_no_private_name_crosses_a_package():
    crossing = [f"{m} imports {n} from {t}" for m, edges in import_graph().items() for t, names in edges.items()
                for n in names if n.startswith("_") and package_of(t) != package_of(m) and t != "bench"]
    assert not crossing, "private names imported from another package:\n" + "\n".join(crossing)


def test_no_function_over_60_lines_and_no_module_over_400():
    long_functions, long_modules = [], []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


@pytest.mark.parametrize("package", sorted(LAYER))
def test_every_package_says_what_it_holds(package):
    init = ROOT / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text()))
    assert docstring and len(docstring) > 40, f"bench/{package}/__init__.py needs a docstring that says what it holds"

"""The module structure of utils/: its import graph has no cycle (a module is a layer: it builds on
the ones below it and never reaches back up), and no module of utils/ loads a top-level script (a
script is an entry point; what a script knows that others need belongs in utils/).

The graph is read from the source (every import statement, at module level or inside a function),
so an import that runs only on some path counts as much as one that always runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UTILS = REPO / "utils"
SCRIPTS = {p.stem for p in REPO.glob("*.py")}
# the calls that load code from a path or a computed name
LOADERS = {"spec_from_file_location", "run_path", "import_module", "__import__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(UTILS.rglob("*.py"))}


def imported_names(module: str, tree: ast.AST) -> set[str]:
    """Every module name an import statement of ``tree`` names (``from a import b`` names a.b
    when that is a module, else a)."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the utils modules it imports (a package's import also runs its __init__)."""
    graph = {}
    for name, path in modules.items():
        found = imported_names(name, ast.parse(path.read_text(), str(path)))
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_utils_has_no_import_cycle():
    graph = import_graph(MODULES)
    assert graph["utils.rpu_configs"] >= {"utils.cli", "utils.analog_torch.presets"}  # read right
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in utils/: " + " -> ".join(cycle)


def test_the_torch_backend_imports_nothing_outside_itself():
    graph = import_graph(MODULES)
    outside = {name: sorted(m for m in deps if not m.startswith("utils.analog_torch"))
               for name, deps in graph.items() if name.startswith("utils.analog_torch")}
    assert not any(outside.values()), outside


def script_loads(path: Path) -> list[str]:
    """What in ``path`` imports a top-level script or loads code from a path."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in SCRIPTS]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found += [node.module] if node.module.split(".")[0] in SCRIPTS else []
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            found += [f"{name}(...) at line {node.lineno}"] if name in LOADERS else []
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_utils_module_loads_a_top_level_script(module):
    assert not script_loads(MODULES[module]), f"{MODULES[module]} loads a top-level script"

"""Imports point one way: views → router → providers / health → core (docs/architecture.md).

Every module of the four packages is parsed (not imported) and every import it makes is
read, function-local ones included: a function-local import still ties the two modules
together, it only hides the tie from the reader (imports under ``if TYPE_CHECKING:`` are
left out: they exist for the type checker only). Two rules follow:

- no cycle among the project's modules;
- no upward import: manallm's core imports no app, providers import neither health nor
  routing, health does not import routing, and nothing below manallm's top imports it.

The top of manallm (the ASGI entry point, the handler and middleware, the URL table,
settings, the app config) wires the apps together and may import any of them.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("manallm", "routing", "health", "providers", "consumers", "requestlog")
# manallm's top: what wires the apps together, above every app (manallm.views is not: it holds
# the /v1 views' shared wrapper, which the apps build on).
MANALLM_TOP = {"manallm.asgi", "manallm.urls", "manallm.handler", "manallm.middleware",
               "manallm.settings", "manallm.wsgi", "manallm.apps", "manallm.serve"}
# Which packages each layer must never import.
# consumers (keys, scopes, limits, usage) and requestlog (the request log) sit beside
# health: routing's views call them, they know the core only.
FORBIDDEN = {
    "manallm": {"routing", "health", "providers", "consumers", "requestlog"},  # the core
    "providers": {"health", "routing", "consumers", "requestlog"},
    "health": {"routing", "consumers", "requestlog"},
    "consumers": {"routing", "health", "providers", "requestlog"},
    "requestlog": {"routing", "health", "providers", "consumers"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (read by type checkers only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports the module pkg.mod when there is one.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> str | None:
    """The layer whose rules ``module`` follows (None: manallm's top, free to import apps)."""
    if module in MANALLM_TOP:
        return None
    return module.split(".")[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        forbidden = FORBIDDEN.get(layer_of(module), set())
        found += [f"{module} imports {target}" for target in sorted(targets)
                  if target.split(".")[0] in forbidden or (module not in MANALLM_TOP and target in MANALLM_TOP)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_package_is_read(graph):
    assert {"manallm.background", "routing.router", "health.board", "providers.registry"} <= set(graph)
    assert "manallm.background" in graph["routing.signals"]  # function-local and relative imports are seen


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_imports_point_down(graph):
    assert upward_imports(graph) == []


def test_the_check_sees_an_upward_import():
    graph = {"manallm.background": {"routing.table"}, "routing.table": set(), "health.board": {"routing.table"},
             "providers.http": {"health.board"}, "manallm.asgi": {"routing.table"},
             "routing.views": {"manallm.handler"}}
    assert upward_imports(graph) == ["health.board imports routing.table", "manallm.background imports routing.table",
                                     "providers.http imports health.board", "routing.views imports manallm.handler"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_local_imports_count_and_type_checking_ones_do_not(tmp_path):
    path = tmp_path / "board.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from routing import table\n"
                    "def f():\n    from manallm import background\n")
    assert imports_of("health.board", path, {"routing.table", "manallm.background"}) == {"manallm.background"}

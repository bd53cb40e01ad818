"""The package's import structure: no import cycles, and the catalog tools stay light.

Every module under `tfrec_lm/` is parsed (nothing is imported) and each `import` /
`from ... import` statement anywhere in it (module level or inside a function, since a
deferred import still closes a circle the moment it runs) becomes an edge to the
`tfrec_lm` module it names. A package counts as its `__init__.py`; `from tfrec_lm.x
import y` points at `tfrec_lm.x.y` when that is a module, else at `tfrec_lm.x`. Imports
under `if TYPE_CHECKING:` never run and are left out. An import of `a.b.c` is an edge to
`a.b.c` only (not to the parent packages Python initialises on the way), so the usual
"`__init__.py` re-exports its submodules" pattern is not a cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "tfrec_lm"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
# The catalog tools (`python -m tfrec_lm.catalog`) must not pull in the training stack.
CATALOG_FORBIDDEN = ("tfrec_lm.training", "tfrec_lm.fitting", "tfrec_lm.train")


def module_name(path: Path) -> str:
    """The dotted name of a file under ROOT (`tfrec_lm/a/__init__.py` -> `tfrec_lm.a`). str."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict:
    """{dotted name: path} of every module and package under ROOT. dict."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST):
    """Every import statement in `tree`, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict) -> str | None:
    """`name`, or its nearest parent, that is a module of the package; None outside it."""
    while name:
        if name in modules:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def imports_of(name: str, modules: dict) -> set:
    """The package modules that module `name` imports. set of str."""
    path = modules[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            resolved = _resolve(target, modules) if target.split(".")[0] == PACKAGE else None
            if resolved is not None and resolved != name:
                found.add(resolved)
    return found


def import_graph() -> dict:
    """{module: set of package modules it imports} for the whole package. dict."""
    modules = all_modules()
    return {name: imports_of(name, modules) for name in modules}


def find_cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan). list of sorted lists."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(start):
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
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
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(components)


def _path(graph: dict, start: str, goal: str, within=None) -> list | None:
    """The shortest import chain from `start` to `goal` (breadth first), None without one. list of str."""
    came_from, queue = {start: None}, [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if within is not None and child not in within:
                continue
            if child == goal:
                chain = [child, node]
                while came_from[chain[-1]] is not None:
                    chain.append(came_from[chain[-1]])
                return chain[::-1]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return None


def _cycle_path(graph: dict, component: list) -> str:
    """One concrete circle through a component, `a -> b -> a`, for the failure message."""
    return " -> ".join(_path(graph, component[0], component[0], set(component)))


# ---------------------------------------------------------------- the graph builder itself


def _fake_package(tmp_path, files: dict) -> dict:
    for relative, text in files.items():
        path = tmp_path / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {module_name_under(tmp_path, p): p for p in sorted((tmp_path / PACKAGE).rglob("*.py"))}


def module_name_under(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_the_graph_builder_sees_deferred_relative_and_package_imports(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "from tfrec_lm.a.b import thing\n",
        "a/b.py": "def f():\n    from . import c\n",
        "a/c.py": "from .. import d\nfrom ..a import b as _b\n",
        "d.py": "import tfrec_lm.a\nimport numpy\nfrom typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from tfrec_lm.a import c\n",
    })
    graph = {name: imports_of(name, modules) for name in modules}
    assert graph["tfrec_lm.a"] == {"tfrec_lm.a.b"}
    assert graph["tfrec_lm.a.b"] == {"tfrec_lm.a.c"}  # deferred, relative
    assert graph["tfrec_lm.a.c"] == {"tfrec_lm.d", "tfrec_lm.a.b"}
    assert graph["tfrec_lm.d"] == {"tfrec_lm.a"}  # a package is its __init__; TYPE_CHECKING left out
    assert find_cycles(graph) == [["tfrec_lm.a", "tfrec_lm.a.b", "tfrec_lm.a.c", "tfrec_lm.d"]]


def test_the_graph_builder_finds_the_old_client_circle(tmp_path):
    """The shape of the circle this test was written for: a shared module importing its users late."""
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "client/__init__.py": "",
        "client/common.py": "def make():\n    from tfrec_lm.client.rest_client import RestClient\n",
        "client/rest_client.py": "from tfrec_lm.client.common import DEFAULT\n",
    })
    graph = {name: imports_of(name, modules) for name in modules}
    assert find_cycles(graph) == [["tfrec_lm.client.common", "tfrec_lm.client.rest_client"]]


# ---------------------------------------------------------------- the package


def test_the_package_is_parsed():
    graph = import_graph()
    assert {"tfrec_lm", "tfrec_lm.client.common", "tfrec_lm.serve.rest", "tfrec_lm.catalog"} <= set(graph)
    assert "tfrec_lm.client.common" in graph["tfrec_lm.client.rest_client"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_cycle_path(graph, c) for c in cycles)


def test_client_modules_form_no_cycle():
    """The client package on its own (it used to have common <-> rest_client / grpc_client)."""
    graph = import_graph()
    client = {n: {m for m in deps if m.startswith("tfrec_lm.client")} for n, deps in graph.items()
              if n.startswith("tfrec_lm.client")}
    assert find_cycles(client) == []


CATALOG_MODULES = sorted(n for n in all_modules() if n == "tfrec_lm.catalog" or n.startswith("tfrec_lm.catalog."))


@pytest.mark.parametrize("name", CATALOG_MODULES)
def test_catalog_never_imports_the_training_stack(name):
    """Neither directly nor through the modules it imports."""
    graph = import_graph()
    chains = [_path(graph, name, bad) for bad in CATALOG_FORBIDDEN if bad in graph]
    chains = [" -> ".join(chain) for chain in chains if chain]
    assert not chains, f"{name} reaches the training stack: " + "; ".join(chains)


def test_the_catalog_check_would_see_a_forbidden_import():
    assert CATALOG_MODULES and "tfrec_lm.training" in import_graph()
    graph = {"tfrec_lm.catalog.x": {"tfrec_lm.registry.y"}, "tfrec_lm.registry.y": {"tfrec_lm.training"},
             "tfrec_lm.training": set()}
    assert _path(graph, "tfrec_lm.catalog.x", "tfrec_lm.training") == \
        ["tfrec_lm.catalog.x", "tfrec_lm.registry.y", "tfrec_lm.training"]

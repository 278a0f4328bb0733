"""HashView's own modules import each other without cycles.

A cycle hidden behind an import inside a function still ties its modules together (none of them
can be understood, tested or moved alone) and becomes an import error when someone moves the
import to the top of the file. So every import statement counts, at module level or inside a
function or method, absolute or relative, except the ones under ``if TYPE_CHECKING:``: those
never run, and they are how an annotation names a type from a module that depends on this one.

Edges, for a module M under ``hashview/``:

- ``import a.b.c`` (with or without ``as``): M -> ``a.b.c``.
- ``from a.b import c``: M -> ``a.b.c`` when that is a module (a submodule is imported), else
  M -> ``a.b`` (a name defined or re-exported by the package's ``__init__``).
- Relative imports are resolved against M's package first.
- The parent packages that Python imports on the way (``import a.b.c`` also runs
  ``a/__init__`` and ``a/b/__init__``) are not edges: else every submodule would be in a cycle
  with the package ``__init__`` that re-exports it. So a package's ``__init__`` may import its
  submodules, and they may import each other; a submodule that takes a name from the
  ``__init__`` of its own package (which imports that submodule, or one leading back to it)
  closes a cycle.
- Imports of the root package (``hashview/__init__.py``) and the imports it makes are left out:
  it re-exports the public API lazily, from a module-level ``__getattr__`` (PEP 562), so it
  imports nothing when it is imported.

Only ``hashview.*`` modules are nodes; ``importlib.import_module(...)`` calls are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "hashview"


def find_modules(package_dir: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join(package + ([target] if target else []))


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_statements(tree: ast.AST):
    """Every Import / ImportFrom node in ``tree``, skipping ``if TYPE_CHECKING:`` bodies."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _is_type_checking_block(node):
            children = node.orelse  # what runs when not type checking
        pending.extend(children)


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` (the file ``path``) imports anywhere."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_statements(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = (resolve_relative(module, is_package, node.level, node.module)
                if node.level else node.module or "")
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
    return {target for target in targets if target in modules and target != module.split(".")[0]}


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: modules it imports}`` of the package, its root ``__init__`` left out."""
    modules = find_modules(package_dir)
    root = package_dir.name
    return {name: imported_modules(name, path, modules)
            for name, path in modules.items() if name != root}


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, written without recursion."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(sorted(graph.get(node, ())))))

    for start in sorted(graph):
        if start in index:
            continue
        work: list = []
        visit(start)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is not None:
                if successor not in index:
                    visit(successor)
                elif successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while not component or component[-1] != node:
                    component.append(stack.pop())
                    on_stack.discard(component[-1])
                components.append(sorted(component))
    return components


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, and modules importing
    themselves."""
    return sorted(component for component in strongly_connected_components(graph)
                  if len(component) > 1 or component[0] in graph.get(component[0], ()))


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"    {source} -> {target}"
             for source in component for target in sorted(graph[source] & members)]
    return "\n".join(["  " + ", ".join(component)] + edges)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def test_every_kind_of_import_is_an_edge(tmp_path):
    _write(tmp_path / "pkg", {
        "__init__.py": "from pkg.a import thing\n",  # root: left out
        "a.py": "def f():\n    import pkg.b\n",
        "b.py": "from . import c\nfrom .sub import name\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
                "else:\n    import pkg.sub.d as d\n",
        "sub/__init__.py": "from pkg.sub.d import name\nfrom pkg import a\n",
        "sub/d.py": "from .. import b\nimport pkg\nimport os\n",
    })
    assert import_graph(tmp_path / "pkg") == {
        "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c", "pkg.sub"}, "pkg.c": {"pkg.sub.d"},
        "pkg.sub": {"pkg.sub.d", "pkg.a"}, "pkg.sub.d": {"pkg.b"}}


def test_cycles_and_self_imports_are_found():
    graph = {"a": {"b"}, "b": {"c", "e"}, "c": {"a"}, "d": {"d"}, "e": set(), "f": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["d"]]
    assert describe(["a", "b", "c"], graph).splitlines()[1:] == [
        "    a -> b", "    b -> c", "    c -> a"]


def test_hashview_has_no_import_cycles():
    graph = import_graph()
    assert "hashview.library.store" in graph["hashview.library"]  # the real package is read
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (modules, then the imports between them):\n" + "\n".join(
        describe(component, graph) for component in cycles)

"""rmm's import graph: no cycle among its modules, and every import points down the layer order.

The stages are layered like the flow they implement: a stage may use the stages before it, never one after, so
each can be read, tested and run without the later ones.

    ======  ==========================================================================================
    layer   modules
    ======  ==========================================================================================
    base    rmm (the package), rmm.errors, rmm.validation, rmm.storage, rmm.config.*, rmm.runs (run
            records), rmm.cluster (starts or joins Ray), rmm.console (progress and log routing), and
            rmm.models.registry with rmm.models.hparams.*: the torch-free table of models and their
            hyperparameter dataclasses, which a config's model entries are checked against
    data    rmm.data.*
    feat.   rmm.features.*
    models  rmm.models.*, rmm.eval.* (pure metrics, used by train)
    train   rmm.train.*
    tune    rmm.tune.*
    report  rmm.report.*
    top     rmm.cli, rmm.stages, rmm.submit, rmm.recommend, rmm.recommend_batch: entry points that wire stages
    ======  ==========================================================================================

A module imports modules of its own layer or lower ones. The graph is read from the source with :mod:`ast`
(module-level and function-level imports alike, since a lazy import is still a dependency; imports under
``if TYPE_CHECKING:`` are left out: they never run), so this test imports no rmm module. It holds the imports
written in the code; that importing ``a.b`` also runs ``a/__init__.py`` is why package ``__init__`` files stay
light (tests/test_imports.py checks what a plain import pulls in).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tests

ROOT = Path(tests.__file__).resolve().parents[1] / "rmm"

#: (module prefix, layer); a module takes the layer of its longest matching prefix.
LAYERS = (
    ("rmm", 0), ("rmm.errors", 0), ("rmm.validation", 0), ("rmm.storage", 0), ("rmm.config", 0), ("rmm.runs", 0),
    ("rmm.cluster", 0), ("rmm.console", 0),
    ("rmm.data", 1),
    ("rmm.features", 2),
    ("rmm.models.registry", 0), ("rmm.models.hparams", 0),
    ("rmm.models", 3), ("rmm.eval", 3),
    ("rmm.train", 4),
    ("rmm.tune", 5),
    ("rmm.report", 6),
    ("rmm.cli", 7), ("rmm.stages", 7), ("rmm.submit", 7), ("rmm.recommend", 7), ("rmm.recommend_batch", 7),
)
LAYER_NAMES = ("base", "data", "features", "models", "train", "tune", "report", "top")

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, package: str) -> Iterator[tuple[str, int]]:
    """``(dotted name, line)`` of every import in ``tree`` except those under ``if TYPE_CHECKING:``; ``from a
    import b`` gives ``a.b`` (``b`` may be a module or a name in ``a``), relative imports resolved against
    ``package``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from imported_names(ast.Module(body=[child], type_ignores=[]), package)
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield from ((f"{base}.{alias.name}", node.lineno) for alias in node.names)
        yield from imported_names(node, package)


def import_graph() -> dict[str, dict[str, int]]:
    """``module -> {imported rmm module: first line}`` over every module of rmm."""
    modules = all_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for imported, line in imported_names(ast.parse(path.read_text(), str(path)), package):
            target = resolve(imported) if imported.split(".")[0] == "rmm" else None
            if target is not None and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def layer(module: str) -> int:
    matches = [(len(prefix), rank) for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return max(matches)[1]


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_walk_sees_lazy_imports_and_skips_type_checking_blocks() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rmm.models\nelse:\n"
                     "    import rmm.data\ndef f():\n    from rmm.train import loop\n    from . import graph\n")
    assert sorted(imported_names(tree, "rmm.data")) == [
        ("rmm.data", 5), ("rmm.data.graph", 8), ("rmm.train.loop", 7), ("typing.TYPE_CHECKING", 1)]


def test_find_cycle_reports_the_path() -> None:
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle[:-1], cycle[1:], strict=True)) + f" -> {cycle[-1]}"


def test_imports_point_down_the_layers() -> None:
    upward = [f"{module}:{line} imports {target} ({LAYER_NAMES[layer(target)]} is above "
              f"{LAYER_NAMES[layer(module)]})"
              for module, edges in import_graph().items() for target, line in edges.items()
              if layer(target) > layer(module)]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


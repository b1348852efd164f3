"""The package's layering, read from the source: no upward imports, no import cycles.

Layers, lowest first (a module may import its own layer and the ones below it):
support (errors, fileio, ...) -> config -> nn -> detection -> models (weights, factory, ...)
-> data -> analysis -> engine -> deploy -> the command line. Every ``import`` counts, at module
level or inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import efficientdet

PACKAGE_DIR = Path(efficientdet.__file__).parent
ROOT = "efficientdet"

LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "errors",
        "fileio",
        "run_dirs",
        "cli_options",
        "runtime",
        "progress",
        "visualize",
    ),  # no domain knowledge
    ("config",),
    ("nn",),
    ("detection",),
    ("weights", "factory", "resources", "model_table"),  # building models, loading weights
    ("data",),
    ("analysis",),
    ("engine",),
    ("deploy",),
    ("cli", "__main__"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

# Known upward imports, each a lazy import inside a command module that runs a later stage
# (this list only shrinks: the test fails when an entry no longer exists).
ALLOWED_UPWARD = {
    # `efficientdet demo` ends by predicting with the model it trained
    ("efficientdet.engine.demo", "efficientdet.deploy.detector"),
    # `efficientdet val` evaluates exported files through the Detector
    ("efficientdet.engine.val_cli", "efficientdet.deploy.backends"),
    ("efficientdet.engine.val_cli", "efficientdet.deploy.detector"),
}


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [ROOT, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """[(imported module of the package, at module level?, line)] of one module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        eager = id(node) in top_level
        if isinstance(node, ast.Import):
            found += [(a.name, eager, node.lineno) for a in node.names if a.name.startswith(ROOT)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], node.module or ""])
            else:
                base = node.module or ""
            base = base.rstrip(".")
            if base != ROOT and not base.startswith(ROOT + "."):
                continue
            if base == ROOT and all(a.name == "__version__" for a in node.names):
                continue  # a constant of the package root, which imports nothing of ours eagerly
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, eager, node.lineno))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


@functools.cache
def _graph() -> dict[str, list[tuple[str, bool, int]]]:
    """{module: its imports} for the whole package (read once; not to be modified)."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_walker_sees_module_level_and_lazy_imports():
    graph = _graph()
    edges = {(m, t, eager) for m, targets in graph.items() for t, eager, _ in targets}
    assert ("efficientdet.deploy.export", "efficientdet.detection.nms", True) in edges
    assert ("efficientdet.analysis.doctor", "efficientdet.data.spec", False) in edges  # lazy
    assert ("efficientdet.cli", "efficientdet.runtime", False) in edges  # `from . import runtime`
    assert set(map(_layer, graph)) - {ROOT} == set(RANK), "a new top-level module needs a layer"


def test_no_upward_imports():
    graph = _graph()
    upward = {
        (module, target): line
        for module, targets in graph.items()
        for target, _, line in targets
        if module != ROOT and RANK[_layer(target)] > RANK[_layer(module)]
    }
    unexpected = [
        f"{m} (line {line}) imports {t}"
        for (m, t), line in upward.items()
        if (m, t) not in ALLOWED_UPWARD
    ]
    assert unexpected == []
    assert ALLOWED_UPWARD <= set(upward), "an allowed upward import is gone: drop it from the list"
    assert [t for t, eager, _ in graph[ROOT] if eager] == [], "the root imports lazily"


def test_data_imports_neither_models_nor_detection():
    """The readers stand on config and the support modules only (the doctor, which needs
    anchors, lives in analysis/)."""
    graph = _graph()
    allowed = {"config", "data", *LAYERS[0]}
    bad = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        if _layer(m) == "data"
        for t, _, _ in targets
        if _layer(t) not in allowed
    ]
    assert bad == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No cycle between top-level parts (any import), none between modules at import time."""
    graph = _graph()
    parts: dict[str, set[str]] = {}
    eager: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target, at_top, _ in targets:
            if _layer(module) != _layer(target):
                parts.setdefault(_layer(module), set()).add(_layer(target))
            if at_top and target != module:
                eager.setdefault(module, set()).add(target)
    assert _cycles(parts) == []
    assert _cycles(eager) == []

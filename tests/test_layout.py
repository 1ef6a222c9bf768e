"""The package's import graph: no circles anywhere (function-level imports count), the shared core
imports nothing above it, dev tools stay apart from the library, the embedding engine never
imports a stage, and refine reaches the engine and its dedup wing only through their entries
(``platypus_ray.embedding``, ``platypus_ray.refine.dedup``)."""

from __future__ import annotations

import ast
from pathlib import Path

import platypus_ray

PACKAGE = Path(platypus_ray.__file__).parent
STAGES = ("refine", "train", "sweep", "merge", "evaluate", "pipeline")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, at any depth of its code (``from pkg import
    name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "platypus_ray.embedding.pool" in graph["platypus_ray.embedding"]  # the walk sees package imports
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_the_embedding_engine_imports_no_stage():
    graph = import_graph()
    offending = sorted(
        (m, t)
        for m, targets in graph.items()
        if m.startswith("platypus_ray.embedding")
        for t in targets
        if t.split(".")[1] in STAGES
    )
    assert not offending, f"platypus_ray.embedding must not import a stage: {offending}"


def test_refine_uses_the_engine_and_the_dedup_wing_through_their_entries():
    graph = import_graph()
    offending = []
    for module, targets in graph.items():
        if not module.startswith("platypus_ray.refine"):
            continue
        for target in targets:
            if target.startswith("platypus_ray.embedding.") or (
                target.startswith("platypus_ray.refine.dedup.") and not module.startswith("platypus_ray.refine.dedup")
            ):
                offending.append((module, target))
    assert not offending, f"refine modules reaching past an entry: {sorted(offending)}"


def test_the_core_imports_only_the_core():
    graph = import_graph()
    offending = sorted(
        (m, t)
        for m, targets in graph.items()
        if m.startswith("platypus_ray.core")
        for t in targets
        if not t.startswith("platypus_ray.core")
    )
    assert not offending, f"platypus_ray.core must not import above itself: {offending}"


# Who may use a dev tool: the CLI's commands (make-tiny-model), the pipeline's build_tiny_model, the
# benches, and the embedding calibration, which measures a backend's decisions against the brute-force rule.
DEVTOOL_USERS = (
    "platypus_ray.cli",
    "platypus_ray.pipeline",
    "platypus_ray.bench",
    "platypus_ray.devtools",
    "platypus_ray.embedding.calibrate",
)


DOCS_GENERATOR = "platypus_ray.devtools.docs"


def test_dev_tools_stay_apart_from_the_library():
    graph = import_graph()
    offending = sorted(
        (m, t)
        for m, targets in graph.items()
        if not m.startswith(DEVTOOL_USERS)
        for t in targets
        if t.startswith("platypus_ray.devtools")
    )
    assert not offending, f"library modules importing a dev tool: {offending}"
    # The docs generator documents the CLI, so it alone may import it; nothing may import the generator.
    upward = sorted(
        (m, t)
        for m, targets in graph.items()
        if m.startswith("platypus_ray.devtools") and m != DOCS_GENERATOR
        for t in targets
        if t in ("platypus_ray.cli", "platypus_ray.pipeline")
    )
    assert not upward, f"dev tools importing the top of the package: {upward}"
    users = sorted(m for m, targets in graph.items() if DOCS_GENERATOR in targets)
    assert not users, f"modules importing the docs generator: {users}"


def test_a_circle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]

"""The packages import one way (docs/design.md §8): cli -> commands -> app -> model -> prompt_bank ->
pretrained -> data -> common. Every import statement counts, also those inside functions (imported late for speed, they
are still dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["cli", "commands", "app", "model", "prompt_bank", "pretrained", "data", "common"]
"""Top to bottom: a package may import only the packages after it."""


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _sources() -> list[Path]:
    files = [ROOT / "cli.py"]
    for package in LAYERS[1:]:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def imported_packages(path: Path) -> dict[str, int]:
    """Our top-level packages a file imports, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in LAYERS:
                found.setdefault(top, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, str]]:
    """package -> {imported package: 'file:line' of one import that makes the edge}."""
    graph: dict[str, dict[str, str]] = {p: {} for p in LAYERS}
    for path in _sources():
        source = _package_of(path)
        for target, line in imported_packages(path).items():
            if target != source:
                graph[source].setdefault(target, f"{path.relative_to(ROOT)}:{line}")
    return graph


def test_the_parser_sees_imports_inside_functions(tmp_path):
    """The check is only as good as its parser: late imports and ``import x.y`` count."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport data.vocabulary\n\ndef f():\n    from model.dpseg import DPSeg\n"
        "    from .sibling import x\n"
    )
    assert imported_packages(sample) == {"data": 2, "model": 5}


def test_every_package_imports_only_the_layers_below_it():
    graph = import_graph()
    assert graph["model"], "the parse found no import at all: the test is broken"
    upward = [
        f"{source} imports {target} ({where})"
        for source, targets in graph.items()
        for target, where in targets.items()
        if LAYERS.index(target) < LAYERS.index(source)
    ]
    assert not upward, (
        "imports against the layers " + " > ".join(LAYERS) + ":\n" + "\n".join(upward)
    )


def test_the_top_level_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for package in LAYERS:
        if package not in state:
            visit(package, [])


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports when it runs: every import statement, also inside
    functions, but not those under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} & modules
            found |= {f"{node.module}.{a.name}" for a in node.names} & modules
    return found


def test_no_two_modules_import_each_other():
    """A pair of files that import each other (even late, inside functions) is one module split
    in two, or a layer turned upside down: the lower one must not need the upper one."""
    files = _sources()
    name_of = {}
    for path in files:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name_of[path] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules = set(name_of.values())
    edges = {name_of[p]: _runtime_imports(p, modules) for p in files}
    assert len(edges) > 100, "the scan found too few modules: the test is broken"
    pairs = sorted(
        {
            tuple(sorted((a, b)))
            for a, targets in edges.items()
            for b in targets
            if a != b and a in edges.get(b, set())
        }
    )
    assert not pairs, f"modules that import each other: {pairs}"

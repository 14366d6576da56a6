"""The library's layering holds (import-linter's contract in .importlinter), and no two
modules import each other, directly or in a ring (in the library and in the sandbox)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_layers_contract_is_kept():
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            str(ROOT / ".importlinter"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def import_cycles(package: str) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), imports inside
    functions included."""
    graph = grimp.build_graph(package)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


@pytest.mark.parametrize("package", ["tracktion_dr", "tracktion_sandbox"])
def test_no_import_cycles(package):
    assert import_cycles(package) == []


def test_the_library_never_imports_the_sandbox():
    graph = grimp.build_graph("tracktion_dr", "tracktion_sandbox")
    crossing = [
        (importer, imported)
        for importer in graph.modules
        if importer.startswith("tracktion_dr")
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith("tracktion_sandbox")
    ]
    assert crossing == []

"""The layering the house style promises, read from the source (ast), so a regression names
the file: benchmarks import nothing from tests."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_benchmarks_import_nothing_from_tests() -> None:
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m.split(".")[0] == "tests")
        for path in sorted((REPO / "benchmarks").glob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}

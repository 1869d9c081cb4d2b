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


PACKAGES = ("flairseg", "study", "dashboards")


def python_files(*packages: str):
    for package in packages:
        yield from sorted((REPO / package).rglob("*.py"))


def test_no_module_over_400_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in python_files(*PACKAGES)
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long


def test_no_function_over_60_lines_without_saying_why() -> None:
    """A longer function must open with a comment saying why it is one piece."""
    long = []
    for path in python_files(*PACKAGES):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 <= 60:
                    continue
                top = " ".join(lines[node.body[0].lineno - 3 : node.body[0].lineno + 2])
                if "one piece" not in top:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long


def test_model_only_knob_names_live_in_the_model_files() -> None:
    """Adding a model is one file: outside flairseg/models/, no code names a model's knob."""
    import re

    from flairseg.models import MODELS

    # the SETR-only and U-Net-only knobs; `width` and `dim` are common words elsewhere
    names = ("num_cuts", "mlp_dim", "heads", "norm")
    union = MODELS.union()
    assert all(len(union[name]) == 1 for name in names)  # each is one model's own
    pattern = re.compile(rf"\b({'|'.join(names)})\b")
    found = [
        f"{path.relative_to(REPO)}:{i}"
        for path in python_files(*PACKAGES)
        if "models" not in path.relative_to(REPO).parts
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found


def test_private_attributes_of_the_libraries_only_in_the_adapters() -> None:
    """Optuna's and Ray's private attributes are reached through study/adapters.py alone."""
    import re

    private = re.compile(r"\._(ot_trials|ot_study|trial_id|storage|study_id)\b")
    found = [
        f"{path.relative_to(REPO)}:{i}"
        for path in python_files(*PACKAGES)
        if path.name != "adapters.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith(
        "TYPE_CHECKING"
    )


def _executed_imports(tree: ast.AST):
    """Every import statement that can run: the module's and its functions', not those under
    `if TYPE_CHECKING:` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not _is_type_checking(node):
            yield from _executed_imports(node)


def own_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports: `from a import b` names a.b where b is a module,
    else a; relative imports resolved; a name not a module of ours counts as its package."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str | None] = set()
    for node in _executed_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(ours(alias.name) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            up = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(up + ([node.module] if node.module else []))
        found.update(ours(f"{base}.{alias.name}") for alias in node.names)
    return {name for name in found if name and name != here}


# A circle kept on purpose (each edge a function-level import, with a reason) goes here as
# the sorted tuple of its modules: none today.
DELIBERATE_CIRCLES: dict[tuple[str, ...], str] = {}


def test_no_import_circle_among_our_modules() -> None:
    """No module of flairseg/, study/ or dashboards/ takes part in an import circle among them.

    Read statically (ast): module-level imports and function-level (lazy) ones alike, since a
    lazy import still ties the two modules together; only imports under `if TYPE_CHECKING:`
    are left out, as they never run. A circle found is named with its modules (strongly
    connected components of the import graph); one kept on purpose is listed in
    DELIBERATE_CIRCLES with its reason.
    """
    paths = {_module_name(p): p for p in python_files(*PACKAGES)}
    graph = {name: own_imports(path, set(paths)) for name, path in paths.items()}
    reach = {name: _reaches(graph, name) for name in graph}
    circles = {
        tuple(sorted(m for m in reach[name] if name in reach[m]))
        for name in graph
        if name in reach[name]
    }
    assert not circles - set(DELIBERATE_CIRCLES)


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or through others (itself when in a circle)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_parts_of_study_import_only_themselves_and_the_parts_before() -> None:
    """study/'s four parts (study.PARTS: base, tracking, search, run, as study/__init__.py
    says): every module is in exactly one, and none imports a module of a later part."""
    import study

    order = list(study.PARTS)
    part = {m: name for name, modules in study.PARTS.items() for m in modules}
    listed = [m for modules in study.PARTS.values() for m in modules]
    assert len(listed) == len(set(listed)), "a module in two parts"
    paths = {_module_name(p): p for p in python_files("study")}
    modules = {name.removeprefix("study.") for name in paths} - {"study", "__init__"}
    assert modules == set(part), f"not in a part: {sorted(modules - set(part))}"
    backwards = [
        f"{here} ({part[here]}) imports {there} ({part[there]})"
        for name, path in paths.items()
        if (here := name.removeprefix("study.")) in part
        for imported in own_imports(path, set(paths))
        if (there := imported.removeprefix("study.")) in part
        and order.index(part[there]) > order.index(part[here])
    ]
    assert backwards == []

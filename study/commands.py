"""Commands the program prints for a user to type (resume, register, the MLflow UI, the live
view), runnable as written: this environment's programs named by a path the shell finds,
`.venv/bin/python` below the current folder, else the absolute path, and a bare name only
where the shell finds this very program by it (an activated environment)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def runnable(path: Path) -> str:
    """`path` as typed in the current folder: its bare name when the PATH finds this very
    file by it, `.venv/bin/x` below the folder, else absolute."""
    found = shutil.which(path.name)
    if (
        found
        and os.path.realpath(found) == os.path.realpath(path)
        and Path(found).parent == path.parent
    ):
        return shlex.quote(path.name)
    try:
        shown = str(path.relative_to(Path.cwd()))
        shown = shown if "/" in shown else f"./{shown}"
    except ValueError:
        shown = str(path)
    return shlex.quote(shown)


def tool(name: str) -> str:
    """A program of this interpreter's environment (mlflow, optuna-dashboard, pip)."""
    return runnable(Path(sys.executable).parent / name)


def python() -> str:
    """This interpreter, as a user types it here."""
    return runnable(Path(sys.executable))

"""The commands the program prints run as typed: the interpreter and tools of its own
environment, by a path the shell finds (study.commands)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from study import commands
from tests.study_helpers import REPO


def test_below_the_folder_a_relative_path_elsewhere_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # not activated: no bare name finds it
    here = Path(sys.executable).parent.parent.parent  # the folder that holds .venv
    monkeypatch.chdir(here)
    shown = commands.python()
    assert not shown.startswith("/") and shown.endswith("/python"), shown
    monkeypatch.chdir(tmp_path)
    assert commands.python() == sys.executable
    assert commands.tool("mlflow") == str(Path(sys.executable).parent / "mlflow")


def test_an_activated_environment_gets_bare_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert commands.python() == "python"
    assert commands.tool("mlflow") == "mlflow"


def test_a_printed_resume_command_runs_as_printed(tmp_path: Path) -> None:
    """`python -m study.run --resume` as the plan prints it, run by a shell in that folder."""
    from types import SimpleNamespace

    from study.plan import resume_command

    os.chdir(tmp_path)
    try:
        line = resume_command(
            SimpleNamespace(search="combo_alpha", storage="studies", optuna_storage=None), "demo"
        )
    finally:
        os.chdir(REPO)
    assert line.startswith(f"{sys.executable} -m study.run ")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": "/usr/bin:/bin"}
    shell = shutil.which("sh") or "/bin/sh"
    done = subprocess.run(
        [shell, "-c", line], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    # nothing to resume in a new folder: said, exit 0; a bare `python` would not even start
    assert done.returncode == 0 and "nothing to resume" in done.stdout, done.stderr

"""Every shell command in the README and in docs/ runs as written after `./scripts/setup.sh`: nothing
relies on an activated environment (`python`, `pytest`, `mlflow` alone are not on a fresh
machine's PATH), every module it runs exists, and every flag it gives is one that module
takes. Docker, kubectl and ssh lines (the cluster section) are checked for their form only.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.study_helpers import REPO

FENCE = re.compile(r"^```(\S*)\s*$")
SHELL = {"bash", "sh", "shell", "console", ""}
# what a line may start with: the project's environment, its scripts, and the shell's own
VENV_TOOLS = {"python", "pytest", "ruff", "mlflow", "optuna-dashboard", "pip", "mkdocs"}
ELSEWHERE = {"docker", "kubectl", "ssh"}  # the cluster section: run where those are
PLAIN = {"export", "cd", "cp", "bash", "chmod", "mkdir", "du", "ls", "cat"}


# the pages whose commands a reader copies: the README and every page of the documentation
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def readme_commands(page: Path = REPO / "README.md") -> list[tuple[int, str]]:
    """(line number, command) of every command in a page's shell code blocks, with
    backslash continuations joined and comments dropped."""
    found, block, pending = [], None, ""
    for n, raw in enumerate(page.read_text().splitlines(), start=1):
        fence = FENCE.match(raw)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block not in SHELL or block is None:
            continue
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        found.append((n, pending + line))
        pending = ""
    return found


def steps(command: str) -> list[list[str]]:
    """The simple commands of a line (split at && and ;), each as words without the
    leading VAR=value assignments."""
    out = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


@functools.cache
def module_help(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"python -m {module} --help: {result.stderr[-500:]}"
    return result.stdout


COMMANDS = readme_commands()
EVERY = [
    (f"{page.relative_to(REPO)}:{n}", command)
    for page in PAGES
    for n, command in readme_commands(page)
]


def test_the_readme_has_its_commands() -> None:
    assert len(COMMANDS) >= 10 and len(EVERY) > 50
    first = [c for _, c in COMMANDS[:2]]
    assert first[0].startswith(
        "./scripts/setup.sh && .venv/bin/python -m study.run --search combo_alpha"
    )
    assert first[1].startswith("./scripts/setup.sh --tests && .venv/bin/python -m pytest")


@pytest.mark.parametrize(("line", "command"), EVERY, ids=[where for where, _ in EVERY])
def test_each_command_runs_as_written(line: str, command: str) -> None:
    for words in steps(command):
        head = words[0]
        if head.startswith("["):  # a synopsis line's optional flags: checked with their command
            continue
        if head in ELSEWHERE or head in PLAIN or head == "./scripts/setup.sh":
            continue
        assert head.startswith(".venv/bin/"), (
            f"{line}: `{head}` is not on a fresh machine's PATH; write .venv/bin/{head}"
        )
        tool = head.removeprefix(".venv/bin/")
        assert tool in VENV_TOOLS, f"{line}: {head} is not something setup installs"
        if tool == "python" and words[1:2] == ["-m"]:
            module = words[2]
            assert importlib.util.find_spec(module) is not None, f"line {line}: no module {module}"
            if module in ("pytest", "pip"):
                continue
            flags = {
                w.split("=")[0].strip("[]") for w in words[3:] if w.lstrip("[").startswith("--")
            }
            helped = module_help(module)
            missing = sorted(f for f in flags if f not in helped)
            assert not missing, f"{line}: python -m {module} takes no {missing}"


def test_the_readme_reads_in_five_minutes() -> None:
    """The README stays a front page (under 250 lines); the rest lives in docs/."""
    assert len((REPO / "README.md").read_text().splitlines()) < 250

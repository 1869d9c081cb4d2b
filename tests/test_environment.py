"""What a study records of its code and machine (study.environment), read as it is here."""

from __future__ import annotations

import subprocess

import pytest

from study.environment import REPO, environment


def test_the_environment_is_what_this_checkout_and_these_modules_are() -> None:
    import mlflow
    import optuna
    import ray
    import torch

    env = environment()
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        assert env["env.commit"] == head
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert env["env.dirty"] == ("true" if dirty else "false")
    for name, module in {"torch": torch, "ray": ray, "optuna": optuna, "mlflow": mlflow}.items():
        assert env[f"env.{name}"] == module.__version__
    assert ("env.cuda" in env) == (torch.version.cuda is not None)
    if not torch.cuda.is_available():
        assert not [k for k in env if k.startswith("env.gpu")]  # never faked


def test_a_tree_without_git_records_no_commit(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import study.environment as module

    monkeypatch.setattr(module, "REPO", tmp_path)  # a copied tree: no .git there
    assert "env.commit" not in environment() and "env.dirty" not in environment()


def test_gpu_use_is_absent_where_there_is_no_gpu() -> None:
    """study.gpu_use samples only a CUDA device NVML knows: on a CPU no sampler, no metric."""
    import torch

    from study import gpu_use

    cpu = torch.device("cpu")
    assert gpu_use.watch(cpu) is None and gpu_use.since_last(cpu) == {}
    if not torch.cuda.is_available():
        assert gpu_use.since_last(torch.device("cuda")) == {}

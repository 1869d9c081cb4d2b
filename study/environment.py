"""What a study ran on, for its parent run: the code (commit, a dirty tree), the versions of
Python and of the libraries that compute or record its results, and this machine's devices.

Each value is read, never assumed: a checkout without git (a wheel, a copied tree) gets
no commit tag, a machine without a GPU no GPU tags, a torch without CUDA no CUDA version.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "env."  # the tags' names: env.commit, env.torch, env.gpu.0, ...


def environment() -> dict[str, str]:
    """The tags: env.commit and env.dirty (git), env.version (the project's), env.python,
    env.torch, env.cuda, env.cudnn, env.ray, env.optuna, env.mlflow, env.host, env.cpu,
    env.gpu.N (each GPU's name) and env.gpu_driver where they exist."""
    import torch

    found: dict[str, str | None] = {
        **_git(),
        "version": _version("flairseg-study"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else None,
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "mlflow": _version("mlflow"),
        "host": platform.node(),
        "cpu": _cpu(),
    }
    gpus = _gpus()  # from nvidia-smi: the driver starts no CUDA context for the record
    for i, name in enumerate(gpus):
        found[f"gpu.{i}"] = name
    if gpus:
        found["gpu_driver"] = _driver()
    return {PREFIX + k: v for k, v in found.items() if v}


def _git() -> dict[str, str | None]:
    """The checkout's commit and whether its tree differs from it (none without git)."""
    if not (REPO / ".git").exists():
        return {}
    try:
        head = _run("git", "rev-parse", "HEAD")
        status = _run("git", "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head.strip(), "dirty": "true" if status.strip() else "false"}


def _run(*argv: str) -> str:
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> str | None:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _driver() -> str | None:
    """The NVIDIA driver's version."""
    found = _smi("driver_version")
    return found[0] if found else None


def _gpus() -> list[str]:
    """Each GPU's name, from nvidia-smi where it is installed (none without)."""
    return _smi("name")


def _smi(field: str) -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


if __name__ == "__main__":  # what a study would record here
    for key, value in environment().items():
        print(f"{key}: {value}", file=sys.stdout)

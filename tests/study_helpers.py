"""Running `python -m study.run` as a user would, against a temporary MLflow and Optuna store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a valid one-trial search, for tests that change one thing in it
GOOD_SEARCH = """
description: test
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  alpha: {uniform: [0.0, 1.0]}
trials: 1
asha: {max_epochs: 1}
"""

# a search where two configs learn and four cannot (lr 1e-7): ASHA must stop those; with
# fewer, one that cannot learn may tie the median at the first rung and go on
HOPELESS = """objective: {metric: val_loss, mode: min}
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  lr: {choice: [0.003, 0.0000001]}
points: [{lr: 0.003}, {lr: 0.0000001}, {lr: 0.0000001}, {lr: 0.003}, {lr: 0.0000001}, {lr: 0.0000001}]
trials: 6
asha: {max_epochs: 4, grace_period: 1, reduction_factor: 2}
concurrency: 1
"""


_TEMPLATE: list[Path] = []  # this test process's empty MLflow store, made once


def mlflow_template() -> Path:
    """An empty MLflow SQLite store, made once per test process: creating one runs MLflow's
    migrations, seconds per study, so each study copies it instead."""
    if not _TEMPLATE:
        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="flairseg-mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


@dataclass
class StudyEnv:
    """A study's folder. `fresh`: its studies find no MLflow store and make their own (the
    tests of the stores' first use, and of what a refused study leaves: nothing); otherwise
    `run` and `start` begin with an empty store copied from `mlflow_template`."""

    root: Path
    data: Path
    fresh: bool = False
    # the confirmation stage (study.confirm) retrains finalists: its own tests turn it on,
    # the others study something else and run with --no-confirm unless they give --confirm
    confirm: bool = False

    def _prefill(self) -> None:
        db = self.root / "mlflow.db"
        if not self.fresh and not db.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mlflow_template(), db)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.root / 'studies' / 'optuna.db'}"

    def argv(self, *args: str) -> list[str]:
        base = [
            sys.executable,
            "-m",
            "study.run",
            "--storage",
            str(self.root / "studies"),
            "--mlflow-uri",
            self.mlflow_uri,
            "--status-every",
            "5",
        ]
        if "--data" not in args and "--resume" not in args:
            base += ["--data", str(self.data)]
        if not self.confirm and not {"--confirm", "--no-confirm", "--list"} & set(args):
            base.append("--no-confirm")
        return base + list(args)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"}

    def run(
        self, *args: str, timeout: float = 900, env_extra: dict[str, str | None] | None = None
    ) -> subprocess.CompletedProcess:
        """`python -m study.run ARGS`; `env_extra` sets variables (None: unsets one)."""
        env = {**self.env(), **(env_extra or {})}
        self._prefill()
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={k: v for k, v in env.items() if v is not None},
        )

    def run_here(self, *args: str) -> tuple[int, str, str]:
        """`python -m study.run ARGS` in this process (for checks that fail before Ray
        starts): exit status, stdout, stderr. Runs in `root`, as `run` does."""
        from tests.inproc import call_cli

        result = call_cli(*self.argv(*args)[2:], cwd=self.root)
        return result.returncode, result.stdout, result.stderr

    def start(
        self, *args: str, log: str = "driver.log", env_extra: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen, Path]:
        """`python -m study.run ARGS` in the background, its output in `log`."""
        self._prefill()
        path = self.root / log
        handle = path.open("w")
        proc = subprocess.Popen(
            self.argv(*args),
            cwd=self.root,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env(), **(env_extra or {})},
        )
        handle.close()
        return proc, path

    # -- reading the stores back ------------------------------------------------------

    def runs(self, experiment: str) -> list:
        from mlflow.tracking import MlflowClient

        c = MlflowClient(self.mlflow_uri)
        exp = c.get_experiment_by_name(experiment)
        assert exp is not None, f"no MLflow experiment {experiment}"
        return c.search_runs([exp.experiment_id], max_results=1000)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.mlflow_uri)

    def study(self, name: str):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=name, storage=self.optuna_url)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    """Wait until the driver's log holds `text` (fail if it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"driver exited ({proc.returncode}) before {text!r}:\n{path.read_text()}"
            )
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    raise AssertionError(f"timed out waiting for {text!r}:\n{path.read_text()}")


def write_search(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def readable_by_others(root: Path) -> list[str]:
    """Files under `root` that a user other than the owner can read (mode o+r)."""
    return [str(p) for p in root.rglob("*") if p.is_file() and p.stat().st_mode & 0o004]

"""What do Ray Tune, Optuna and MLflow cost? The same trials through `study.run` and in a plain loop.

    python -m benchmarks.study_overhead [--trials 8] [--epochs 20] [--image-size 64] [--json FILE]

Both sides train the same trials (U-Net width 16, Combo loss, alpha evenly spread
over [0.1, 0.9], lr 1e-3, on the synthetic default at 64 px), one trial at a time
with 2 torch threads, no early stopping:

- plain: `flairseg.engine.train` called back to back in this process (data already
  loaded, no checkpoints, no logging);
- study: `python -m study.run` as a user starts it, in a fresh process: Python and
  Ray start-up, data load, Optuna, a checkpoint and an MLflow step per epoch, the
  evolution pictures, the final test evaluation. The whole process is timed, so the
  ratio charges every fixed cost to the study.

It prints both wall times and the ratio, and the study's own fit time (from its
summary) so the fixed start-up cost can be told apart from the per-epoch cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import train
from flairseg.train import default_data, write_json


def alphas(n: int) -> list[float]:
    return [round(0.1 + 0.8 * i / max(n - 1, 1), 4) for i in range(n)]


def trial_config(epochs: int, size: int) -> TrainConfig:
    """The benchmark's trial: U-Net width 16, Combo loss, lr 1e-3 (alpha varies by trial)."""
    return TrainConfig(
        model="unet", width=16, loss="combo", lr=1e-3, epochs=epochs, image_size=size
    )


def fixed_points_search(
    description: str, n: int, epochs: int, size: int, concurrency: int, cpus: int
) -> dict:
    """`trial_config` at `alphas(n)` as a search file: fixed points, no early stopping."""
    return {
        "description": description,
        "fixed": {
            "model": "unet",
            "loss": "combo",
            "lr": 0.001,
            "image_size": size,
            "unet": {"width": 16},
        },
        "space": {"alpha": {"uniform": [0.0, 1.0]}},
        "points": [{"alpha": a} for a in alphas(n)],
        "trials": n,
        "asha": {"enabled": False, "max_epochs": epochs},
        "concurrency": concurrency,
        "resources": {"cpus": cpus, "gpus": 0},
    }


def plain(data_dir: Path, n: int, epochs: int, size: int) -> float:
    torch.set_num_threads(2)
    base = trial_config(epochs, size)
    data = load_dataset(data_dir, base)
    started = time.perf_counter()
    for alpha in alphas(n):
        train(base.replace(alpha=alpha), data)
    return time.perf_counter() - started


def study(data_dir: Path, n: int, epochs: int, size: int, folder: Path) -> tuple[float, dict]:
    search = fixed_points_search(
        "overhead benchmark: fixed points, no early stopping", n, epochs, size, 1, 2
    )
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(search))
    out = folder / "summary.json"
    argv = [
        sys.executable, "-m", "study.run", "--search", str(path), "--data", str(data_dir),
        "--storage", str(folder / "studies"), "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--json", str(out), "--status-every", "3600",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=folder, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    data_dir = default_data()
    with tempfile.TemporaryDirectory(prefix="flairseg-overhead-") as tmp:
        study_s, summary = study(data_dir, args.trials, args.epochs, args.image_size, Path(tmp))
    plain_s = plain(data_dir, args.trials, args.epochs, args.image_size)
    fit_s = summary["seconds"]
    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.image_size} px, one at a time, 2 threads"
    )
    print(f"{'':<34}{'wall s':>10}{'ratio':>8}")
    print(f"{'plain loop (train() back to back)':<34}{plain_s:>10.1f}{1.0:>8.2f}")
    print(f"{'study.run, whole process':<34}{study_s:>10.1f}{study_s / plain_s:>8.2f}")
    print(f"{'study.run, Tune fit only':<34}{fit_s:>10.1f}{fit_s / plain_s:>8.2f}")
    print(
        f"epochs: {summary['epochs_spent']} in the study, {args.trials * args.epochs} in the loop"
    )
    if args.json:
        write_json(
            args.json,
            {
                "trials": args.trials,
                "epochs": args.epochs,
                "image_size": args.image_size,
                "plain_s": round(plain_s, 2),
                "study_s": round(study_s, 2),
                "study_fit_s": fit_s,
                "ratio": round(study_s / plain_s, 3),
                "cpus": os.cpu_count(),
            },
        )


if __name__ == "__main__":
    main()

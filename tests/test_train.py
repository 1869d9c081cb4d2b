"""Training: it learns, it repeats itself, it resumes exactly; the CLIs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flairseg.config import TrainConfig
from flairseg.dataset import Dataset, load_dataset
from flairseg.engine import TrainResult, load_checkpoint, train
from tests.conftest import run_cli

SMALL = dict(image_size=32, width=4, batch_size=8)
METRIC_KEYS = {
    "epoch",
    "train_loss",
    "val_loss",
    "val_pixel_accuracy",
    "val_mean_accuracy",
    "val_iou",
    "val_dice",
    "val_volume_dice",
}


def test_short_run_learns(phantom_dir: Path) -> None:
    config = TrainConfig(image_size=64, width=16, epochs=8, seed=0)
    seen = []
    result = train(
        config, load_dataset(phantom_dir, config), on_epoch=lambda r: seen.append(r.metrics)
    )
    assert [m["epoch"] for m in seen] == list(range(1, 9))
    assert set(seen[0]) == METRIC_KEYS
    first, last = seen[0]["val_dice"], seen[-1]["val_dice"]
    assert last > 0.4 and last > first + 0.25, (first, last)
    assert not result.stopped_early


@dataclass
class Resumed:
    """A 4-epoch run whole; the same config trained again and stopped by its callback after
    epoch 2, its checkpoint saved then; that checkpoint resumed to the end."""

    config: TrainConfig
    data: Dataset
    whole: TrainResult
    half: TrainResult
    checkpoint: Path
    resumed: TrainResult


def _resumed_run(model: str, data_dir: Path, folder: Path) -> Resumed:
    knobs = (
        SMALL
        if model == "unet"
        else dict(image_size=32, batch_size=8, num_cuts=8, depth=1, dim=32, heads=2, mlp_dim=32)
    )
    config = TrainConfig(model=model, epochs=4, **knobs)
    data = load_dataset(data_dir, config)
    whole = train(config, data)
    path = folder / "half.ckpt"
    half = train(config, data, on_epoch=lambda r: r.save_checkpoint(path) and False or r.epoch == 2)
    return Resumed(config, data, whole, half, path, train(config, data, resume=path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path) -> Callable[[str], Resumed]:
    """A model's runs, trained once for this module: the resume, the repeat and the
    callback tests read the same U-Net runs."""
    made: dict[str, Resumed] = {}

    def get(model: str) -> Resumed:
        if model not in made:
            made[model] = _resumed_run(model, phantom_dir, tmp_path_factory.mktemp(model))
        return made[model]

    return get


def test_same_config_same_numbers(runs: Callable[[str], Resumed]) -> None:
    unet = runs("unet")
    a = unet.whole.history[:2]
    b = unet.half.history  # the same config trained again, to epoch 2
    assert a == b
    c = train(unet.config.replace(seed=1), unet.data, on_epoch=lambda r: r.epoch == 2).history
    assert len(c) == 2 and a != c


@pytest.mark.parametrize("model", ["unet", "setr"])
def test_resume_from_checkpoint_equals_one_run(model: str, runs: Callable[[str], Resumed]) -> None:
    run = runs(model)
    assert load_checkpoint(run.checkpoint)["epoch"] == 2
    resumed = run.resumed.history
    assert [m["epoch"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(run.whole.history, resumed, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_callback_can_stop(runs: Callable[[str], Resumed]) -> None:
    unet = runs("unet")  # its second run's callback stops it after epoch 2 of 4
    assert len(unet.half.history) == 2 and unet.half.stopped_early
    assert len(unet.whole.history) == 4 and not unet.whole.stopped_early


@pytest.mark.slow
def test_train_then_predict_cli(phantom_dir: Path, tmp_path: Path) -> None:
    scores, ckpt = tmp_path / "scores.json", tmp_path / "model.ckpt"
    result = run_cli(
        "flairseg.train",
        "--data",
        str(phantom_dir),
        "--image-size",
        "32",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--json",
        str(scores),
        "--checkpoint",
        str(ckpt),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert "val dice" in lines[-1] and "test dice" in lines[-1]
    payload = json.loads(scores.read_text())
    assert set(payload) >= METRIC_KEYS
    assert {
        f"test_{k}"
        for k in ("loss", "pixel_accuracy", "mean_accuracy", "iou", "dice", "volume_dice")
    } <= set(payload)
    split = payload["split"]
    assert set(split) == {"train", "val", "test"}
    assert sum(len(v) for v in split.values()) == 12 and all(split.values())
    assert payload["epoch"] == 2

    patient = phantom_dir / split["val"][0]
    out = tmp_path / "pred"
    result = run_cli(
        "flairseg.predict", "--checkpoint", str(ckpt), "--input", str(patient), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "against the 12 ground-truth masks" in result.stdout
    preds = sorted(out.glob("*_pred.tif"))
    overlays = sorted(out.glob("*_overlay.png"))
    assert len(preds) == len(overlays) == 12
    mask = np.asarray(Image.open(preds[0]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}  # at the input's own size
    overlay = Image.open(overlays[0])
    assert overlay.size[0] == 3 * 64 and np.asarray(overlay).std() > 10  # three panels, not blank

    one = next(patient.glob("*_5.tif"))
    result = run_cli(
        "flairseg.predict",
        "--checkpoint",
        str(ckpt),
        "--input",
        str(one),
        "--out",
        str(tmp_path / "one"),
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "one").glob("*_pred.tif"))) == 1


def test_flairseg_imports_no_ray_optuna_mlflow() -> None:
    code = (
        "import importlib, pkgutil, sys, flairseg\n"
        "for m in pkgutil.walk_packages(flairseg.__path__, 'flairseg.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'flairseg.evolution' in sys.modules\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna', 'mlflow'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

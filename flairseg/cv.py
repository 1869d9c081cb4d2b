"""Cross-validated training: one config, its K fold models trained in lockstep.

Each epoch trains every fold model one epoch and scores it on its own fold's val; the
epoch's metrics are the fold mean under the usual keys, with the spread and each
fold's value beside them (names in flairseg.cvkeys), so a caller ranks and stops on
the mean. The fold models share nothing but the config: fold k trained alone with the
same seed learns the same weights. One checkpoint holds all K states.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flairseg import fused
from flairseg.config import TrainConfig
from flairseg.cvkeys import fold_key, single_key, std_key
from flairseg.dataset import Dataset, Part
from flairseg.engine import (
    CHECKPOINT_FORMAT,
    FAST,
    EpochReport,
    Speed,
    Trainer,
    TrainState,
    check_fits,
    evaluate,
    load_checkpoint,
    restore,
    write_checkpoint,
)
from flairseg.ensemble import Ensemble
from flairseg.errors import ConfigError
from flairseg.folds import Folds
from flairseg.speed import layout


def combine(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """The fold mean of every key, its spread (`_std`) and each fold's value (`foldK/`)."""
    combined: dict[str, float] = {}
    for key in per_fold[0]:
        if key == "epoch":
            combined[key] = per_fold[0][key]
            continue
        values = np.array([m[key] for m in per_fold], dtype=np.float64)
        combined[key] = float(values.mean())
        combined[std_key(key)] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        for k, value in enumerate(values, start=1):
            combined[fold_key(k, key)] = float(value)
    return combined


@dataclass
class FoldsState:
    """The K fold states of a cross-validated run, checkpointed as one file."""

    config: TrainConfig
    folds: list[TrainState]
    plan: Folds
    fingerprint: str
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    fused: bool = False  # the fold models trained in one fused step (not checkpointed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "folds": [state.state_dict() for state in self.folds],
            "history": self.history,
            "split": self.plan.to_dict(),
            "fingerprint": self.fingerprint,
        }

    def save(self, path: str | os.PathLike) -> Path:
        return write_checkpoint(self.state_dict(), path)


@dataclass
class FoldsReport:
    """What `on_epoch` receives: the combined metrics, the live state, each fold's report."""

    epoch: int
    metrics: dict[str, float]
    state: FoldsState
    folds: list[EpochReport]

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        return self.state.save(path)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Fold 1's probabilities: the evolution pictures follow fold 1 on its val slices."""
        return self.folds[0].predict(images)


@dataclass
class FoldsResult:
    state: FoldsState
    seconds: float
    stopped_early: bool

    @property
    def metrics(self) -> dict[str, float]:
        return self.state.history[-1] if self.state.history else {}

    def ensemble(self) -> Ensemble:
        return Ensemble([state.model for state in self.state.folds])


def train_folds(
    config: TrainConfig,
    plan: Folds,
    datasets: list[Dataset],
    on_epoch: Any = None,
    resume: dict[str, Any] | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    speed: Speed = FAST,
) -> FoldsResult:
    """Train `config` on each fold of `datasets` (from flairseg.folds.make_folds), one
    epoch of every fold at a time; `on_epoch(FoldsReport)` may return True to stop them
    all. `resume`: a checkpoint of this function (or its path) continues every fold
    from its saved epoch. Raises DivergedError when any fold's loss becomes NaN."""
    for data in datasets:
        check_fits(config, data)
    trainers = [Trainer(config, device, speed) for _ in datasets]
    for trainer, data in zip(trainers, datasets, strict=True):
        trainer.state.extra = {"split": data.split.to_dict(), "fingerprint": data.fingerprint}
    state = FoldsState(config, [t.state for t in trainers], plan, datasets[0].fingerprint)
    if resume is not None:
        restore_folds(state, resume if isinstance(resume, dict) else load_checkpoint(resume))
    parts = [
        (t.to_device(d.train), t.to_device(d.val)) for t, d in zip(trainers, datasets, strict=True)
    ]
    started = time.perf_counter()
    stopped_early = False
    state.fused = fused.chosen(trainers, [train for train, _ in parts])
    for epoch in range(state.epoch + 1, config.epochs + 1):
        per_fold = _epoch(trainers, parts, epoch, state.fused)
        metrics = combine(per_fold)
        state.epoch = epoch
        state.history.append(metrics)
        reports = [
            EpochReport(epoch, m, t.state, t.device, speed)
            for t, m in zip(trainers, per_fold, strict=True)
        ]
        if on_epoch is not None and on_epoch(FoldsReport(epoch, metrics, state, reports)):
            stopped_early = epoch < config.epochs
            break
    return FoldsResult(state, time.perf_counter() - started, stopped_early)


def _epoch(trainers: list[Trainer], parts: list, epoch: int, fuse: bool) -> list[dict]:
    """One epoch of every fold model: trained fused (flairseg.fused) or one after
    another, each then scored on its own val; each fold's metrics."""
    if not fuse:
        return [t.run_epoch(epoch, *p) for t, p in zip(trainers, parts, strict=True)]
    losses = fused.train_epoch(trainers, [train for train, _ in parts])
    return [
        t.finish_epoch(epoch, loss, val)
        for t, loss, (_, val) in zip(trainers, losses, parts, strict=True)
    ]


def restore_folds(state: FoldsState, ckpt: dict[str, Any]) -> None:
    """Load a cross-validated checkpoint of the same config, data and folds into `state`."""
    saved = ckpt.get("folds")
    if not isinstance(saved, list):
        raise ConfigError("checkpoint is of a single-split run: resume it without --folds")
    if len(saved) != len(state.folds):
        raise ConfigError(
            f"checkpoint holds {len(saved)} folds but the run asks for {len(state.folds)}"
        )
    for fold_state, fold_ckpt in zip(state.folds, saved, strict=True):
        restore(fold_state, fold_ckpt)
    state.epoch = int(ckpt["epoch"])
    state.history = list(ckpt["history"])


def score_folds(
    models: list[nn.Module],
    datasets: list[Dataset],
    loss_fn: nn.Module,
    device: str | torch.device = "cpu",
    speed: Speed = FAST,
) -> dict[str, float]:
    """Each fold model on its own val (mean, spread, per fold as in `combine`); on the
    shared test part, the ensemble under the usual `test_` keys and the models one by
    one (`test_iou_single`, its `_std`, and `foldK/test_iou`). Test is left out when
    the datasets hold none."""
    device = torch.device(device)
    for model in models:
        model.to(device, memory_format=layout(speed))
    amp = speed.fast
    val = [
        evaluate(m, d.val, loss_fn, "val", device, amp=amp)
        for m, d in zip(models, datasets, strict=True)
    ]
    scores = combine(val)
    test: Part | None = datasets[0].test
    if test is None:
        return scores
    one_by_one = [evaluate(m, test, loss_fn, "test", device, amp=amp) for m in models]
    scores.update(evaluate(Ensemble(models), test, loss_fn, "test", device, amp=amp))
    singles = combine(one_by_one)
    for key in one_by_one[0]:
        scores[single_key(key)] = singles[key]
        scores[std_key(single_key(key))] = singles[std_key(key)]
        for k in range(1, len(models) + 1):
            scores[fold_key(k, key)] = singles[fold_key(k, key)]
    return scores

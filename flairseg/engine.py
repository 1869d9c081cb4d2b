"""The training loop, evaluation and checkpoints: one config and one data set in, scores out.

`train` calls `on_epoch` once per epoch with that epoch's metrics (keys as in
DESIGN.md: epoch, train_loss, val_loss, val_pixel_accuracy, val_mean_accuracy,
val_iou, val_dice, val_volume_dice); this callback is the one seam a study uses.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flairseg.augment import augment, draw
from flairseg.checkpoint import (  # noqa: F401  (re-exported: the engine's API)
    CHECKPOINT_FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    write_checkpoint,
)
from flairseg.config import TrainConfig
from flairseg.dataset import Dataset, Part
from flairseg.ensemble import Ensemble
from flairseg.errors import ConfigError
from flairseg.evaluation import evaluate, evaluation_pass  # noqa: F401  (re-exported)
from flairseg.speed import FAST, Speed, amp_dtype, layout, mixed_precision, true_fp32


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: torch.Tensor, batch_size: int = 32, amp: bool = True
) -> torch.Tensor:
    """sigmoid(model(images)) in float32 on the images' device; shape (N, 1, H, W); for an
    Ensemble, the mean of its members' probabilities.

    `amp`: mixed precision on CUDA (see Speed); off, the model runs in fp32.
    """
    model.eval()
    device = images.device
    out = []
    with true_fp32(device, amp):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            with mixed_precision(device, amp):
                if isinstance(model, Ensemble):
                    out.append(model.probs(x).float())
                else:
                    out.append(torch.sigmoid(model(x).float()))
    return torch.cat(out) if out else images.new_zeros((0, 1, *images.shape[2:]))


@torch.no_grad()
def score_model(
    model: nn.Module,
    parts: dict[str, Part],
    loss_fn: nn.Module,
    device: str | torch.device | None = None,
    speed: Speed = FAST,
) -> dict[str, float]:
    """`evaluate` on each part (its name is the prefix), on `device` the way a run of
    `speed` scores its val set every epoch, so the numbers match the run's own."""
    device = pick_device(device)
    model.to(device, memory_format=layout(speed))
    scores: dict[str, float] = {}
    for prefix, part in parts.items():
        scores.update(evaluate(model, part, loss_fn, prefix, device, amp=speed.fast))
    return scores


@dataclass
class TrainState:
    """Everything a checkpoint holds; `train` owns one, callbacks may save it."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # the last epoch's training: (images, seconds); a measurement, never checkpointed
    trained: tuple[int, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            **self.extra,
        }

    def save(self, path: str | os.PathLike) -> Path:
        return write_checkpoint(self.state_dict(), path)


@dataclass
class EpochReport:
    """What `on_epoch` receives: the epoch's metrics and the live state (to checkpoint it)."""

    epoch: int
    metrics: dict[str, float]
    state: TrainState
    device: torch.device
    speed: Speed = FAST

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        return self.state.save(path)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, 1, H, W) on the CPU for standardised images (N, C, H, W)."""
        model, amp = self.state.model, self.speed.fast
        return predict_probs(model, images.to(self.device), amp=amp).cpu()


@dataclass
class TrainResult:
    state: TrainState
    seconds: float
    stopped_early: bool

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    @property
    def metrics(self) -> dict[str, float]:
        """The last epoch's metrics ({} when no epoch ran)."""
        return self.state.history[-1] if self.state.history else {}

    @property
    def model(self) -> nn.Module:
        return self.state.model


EpochCallback = Callable[[EpochReport], bool | None]


class Trainer:
    """One run's model, optimizer, loss and training step on one device.

    `train` drives it one epoch at a time; `benchmarks.train_step` times the same
    `train_epoch`. Seeds everything from `config.seed` when it is built.
    """

    def __init__(
        self,
        config: TrainConfig,
        device: str | torch.device | None = None,
        speed: Speed = FAST,
    ) -> None:
        self.device = device = pick_device(device)
        self.speed = speed
        seed_everything(config.seed)
        model = config.build_model().to(device, memory_format=layout(speed))
        self.state = TrainState(
            config,
            model,
            # one fused kernel for the whole update on CUDA; the same arithmetic as the default
            torch.optim.Adam(
                model.parameters(), lr=config.lr, fused=device.type == "cuda" and speed.fast
            ),
            torch.Generator().manual_seed(config.seed),
        )
        self.loss_fn = config.build_loss()
        self.amp_dtype = amp_dtype(device, speed.fast)
        # fp16 needs loss scaling; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if device.type == "cuda" and speed.fast:
            torch.backends.cudnn.benchmark = True  # same shapes every step: autotune once
        if speed.compile:
            # dynamo caches compiled code per code object (UNet.forward, shared by every
            # U-Net) and stops compiling silently after its recompile limit (8): a reused
            # Ray actor that trains differently shaped models one after another would run
            # uncompiled from the ninth on. One run compiles afresh.
            torch._dynamo.reset()
        # compile the forward only: the state keeps the plain module (checkpoint keys as usual)
        self.forward = torch.compile(model) if speed.compile else model

    def to_device(self, part: Part) -> Part:
        """`part` where the step wants it: resident on CUDA with the fast path; else left on
        the host and copied batch by batch, as a plain loop does."""
        return part.to(self.device) if self.device.type == "cuda" and self.speed.fast else part

    def run_epoch(self, epoch: int, train_part: Part, val_part: Part) -> dict[str, float]:
        """Train one epoch, score `val_part`, record it in the state; the epoch's metrics.
        Raises DivergedError on a NaN or infinite train loss."""
        return self.finish_epoch(epoch, self.train_epoch(train_part), val_part)

    def finish_epoch(self, epoch: int, train_loss: float, val_part: Part) -> dict[str, float]:
        """After an epoch's training (its mean loss): score `val_part`, record the epoch."""
        state, config = self.state, self.state.config
        if not math.isfinite(train_loss):
            raise DivergedError(f"train loss became {train_loss} at epoch {epoch} (lr={config.lr})")
        metrics = {"epoch": epoch, "train_loss": train_loss}
        amp = self.speed.fast
        metrics.update(evaluate(state.model, val_part, self.loss_fn, "val", self.device, amp=amp))
        state.epoch = epoch
        state.history.append(metrics)
        return metrics

    def train_epoch(self, part: Part) -> float:
        """One pass over `part` in a fresh random order; the mean train loss.

        The loss is read once, at the end: the only host-device sync of an epoch.
        """
        started = time.perf_counter()
        total = float(self.train_batches(part))  # the read waits for the device: timed whole
        self.state.trained = (len(part), time.perf_counter() - started)
        return total / max(len(part), 1)

    def train_batches(self, part: Part) -> torch.Tensor:
        """The batches of one epoch; the summed loss, left on the device (no sync).

        The order and the augmentation numbers are drawn on the CPU once per epoch and
        moved to the device once, so a batch of resident data costs no host-device copy
        or sync (benchmarks.train_step --sync-check holds that on CUDA).
        """
        plan = self.epoch_plan(part)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        with true_fp32(self.device, self.speed.fast):  # backward included: fp32 throughout
            for start in range(0, len(plan[0]), self.state.config.batch_size):
                x, y = self.batch(part, plan, start)
                loss_sum += self.step(x, y).double() * len(x)
        return loss_sum

    def epoch_plan(self, part: Part) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An epoch's sample order and augmentation numbers, drawn from the run's generator
        (so a run repeats) and moved to where the batches are made. The model in train
        mode."""
        state, device = self.state, self.device
        state.model.train()
        order = torch.randperm(len(part), generator=state.generator)
        draws = draw(len(order), state.generator) if state.config.augment else None
        if device.type == "cuda":  # pinned: a truly asynchronous copy (pageable ones block)
            order = order.pin_memory()
            draws = draws.pin_memory() if draws is not None else None
        order = order.to(part.images.device, non_blocking=True)
        if draws is not None:
            draws = draws.to(device, non_blocking=True)
        return order, draws

    def batch(
        self, part: Part, plan: tuple[torch.Tensor, torch.Tensor | None], start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of the epoch's `plan` from sample `start`: augmented, in the layout."""
        (order, draws), size = plan, self.state.config.batch_size
        x, y = part.batch(order[start : start + size], self.device)
        if draws is not None:
            x, y = augment(x, y, draws[start : start + size])
        return x.contiguous(memory_format=layout(self.speed)), y

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch; its loss (fp32, on the device)."""
        state = self.state
        with mixed_precision(self.device, self.speed.fast):
            logits = self.forward(x)
        loss = self.loss_fn(logits.float(), y)  # the loss in fp32 under bf16 autocast
        state.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(state.optimizer)
        self.scaler.update()
        return loss.detach()


def train(
    config: TrainConfig,
    data: Dataset,
    on_epoch: EpochCallback | None = None,
    resume: dict[str, Any] | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    speed: Speed = FAST,
) -> TrainResult:
    """Train `config` on `data.train`, scoring `data.val` after every epoch.

    `on_epoch(report)` may return True to stop after that epoch. `resume` (a checkpoint
    or its path) continues a run from its last finished epoch; the rest of the run is
    then the same as if it had never stopped. `speed` chooses how it runs (see Speed),
    not what it learns. Raises DivergedError on a NaN loss.
    """
    check_fits(config, data)
    trainer = Trainer(config, device, speed)
    state, device = trainer.state, trainer.device
    state.extra = {"split": data.split.to_dict(), "fingerprint": data.fingerprint}
    if resume is not None:
        restore(state, resume if isinstance(resume, dict) else load_checkpoint(resume))
    train_part, val_part = trainer.to_device(data.train), trainer.to_device(data.val)
    started = time.perf_counter()
    stopped_early = False
    for epoch in range(state.epoch + 1, config.epochs + 1):
        metrics = trainer.run_epoch(epoch, train_part, val_part)
        report = EpochReport(epoch, metrics, state, device, speed)
        if on_epoch is not None and on_epoch(report):
            stopped_early = epoch < config.epochs
            break
    return TrainResult(
        state=state,
        seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
    )


def check_fits(config: TrainConfig, data: Dataset) -> None:
    """The data's image size and channels are the config's, or a ConfigError says which."""
    if data.image_size != config.image_size or data.channels != config.channels:
        raise ConfigError(
            f"data is {data.image_size} px x {data.channels} channels but the config asks for "
            f"image_size={config.image_size}, channels={config.channels}"
        )


def restore(state: TrainState, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint of the same config (epochs aside), data and split into `state`."""
    if "folds" in ckpt:
        raise ConfigError(
            f"checkpoint is cross-validated ({len(ckpt['folds'])} folds): resume it with "
            f"--folds {len(ckpt['folds'])}"
        )
    saved = TrainConfig.from_dict(ckpt["config"])
    if saved.replace(epochs=state.config.epochs) != state.config:
        changed = [
            k
            for k, v in saved.to_dict().items()
            if k != "epochs" and state.config.to_dict()[k] != v
        ]
        raise ConfigError(f"checkpoint was trained with other settings: {', '.join(changed)}")
    if state.extra.get("fingerprint") != ckpt.get("fingerprint") or state.extra.get(
        "split"
    ) != ckpt.get("split"):
        raise ConfigError("checkpoint was trained on another data set or split")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.generator.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    state.epoch = int(ckpt["epoch"])
    state.history = list(ckpt["history"])

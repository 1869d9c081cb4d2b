"""K same-shaped U-Nets trained as one model: the fold models of a cross-validated run.

Horizontal fusion, as HFTA does it (Wang et al., MLSys 2021): the K models' layers run as
one layer K times wider (flairseg.models.unet_fused says how a U-Net's layers fuse,
flairseg.models.setr_fused how a SETR's do).

The K models stay ordinary modules: their parameters are the leaves (each layer's fused
weight is their concatenation, made anew each step, so gradients land in each model's
own parameters), each keeps its optimizer, its running statistics (written back after
each step) and its generator (data order, augmentation). A fused step therefore gives
each model the update a step of its own would, to float tolerance; checkpoints, resume
and the ensemble do not know it ran. U-Nets of one shape fuse, and SETRs of one shape
(`fusable`; not a mix of the two); a fused epoch needs each model's batch to be of one
size, so the folds' uneven last batches run unfused.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

from flairseg.models import setr_fused, unet_fused
from flairseg.models.setr import SETR
from flairseg.models.unet import UNet
from flairseg.speed import mixed_precision, true_fp32

__all__ = ["chosen", "faster", "forward", "fusable", "step", "train_epoch"]

FUSED = {UNet: unet_fused, SETR: setr_fused}  # a model's class: the module that fuses it


def fusable(models: Sequence[torch.nn.Module]) -> bool:
    """Whether `models` can run fused: two or more distinct models of one class that
    fuses (U-Net, SETR) and of one shape. A model given twice does not fuse: one fused
    step would move its running statistics once, where two steps move them twice."""
    fuses = _fusing(models)
    params = [p for m in models for p in m.parameters()]
    distinct = len({id(p) for p in params}) == len(params)  # no model, no parameter twice
    return fuses is not None and distinct and fuses.fusable(models)


def forward(models: Sequence[torch.nn.Module], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each model's logits on its own batch (all of one size), in one fused pass."""
    fuses = _fusing(models)
    if fuses is None:
        raise TypeError(f"no fused forward for {sorted({type(m).__name__ for m in models})}")
    return fuses.forward(models, xs)


def _fusing(models: Sequence[torch.nn.Module]):
    """The module that fuses `models` (flairseg.models.*_fused), None for a mix or another."""
    classes = {type(m) for m in models}
    return FUSED.get(classes.pop()) if len(classes) == 1 else None


def step(trainers: Sequence, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> list:
    """One optimisation step of each of `trainers` (flairseg.engine.Trainer, fusable
    models, no loss scaling) on its own batch, fused; each one's loss (on the device)."""
    first = trainers[0]
    with mixed_precision(first.device, first.speed.fast):
        logits = forward([t.state.model for t in trainers], xs)
    losses = [t.loss_fn(z.float(), y) for t, z, y in zip(trainers, logits, ys, strict=True)]
    for t in trainers:
        t.state.optimizer.zero_grad(set_to_none=True)
    torch.stack(losses).sum().backward()  # the models share nothing: each gets its own grads
    for t in trainers:
        t.state.optimizer.step()
    return [loss.detach() for loss in losses]


def chosen(trainers: Sequence, parts: Sequence) -> bool:
    """Whether these fold models train fused: they can (U-Nets or SETRs of one shape, no
    loss scaling) and the speed says "on", or "auto" on a GPU where the probe (`faster`) finds
    it faster. "auto" on the CPU is one by one, without a probe: grouped convolutions are
    slower there for every U-Net but the smallest (benchmarks.train_step --fused), and a
    choice made by timing would make a run's numbers depend on the machine's load (a
    fused step is the same arithmetic in other kernels: equal to float rounding only)."""
    mode = trainers[0].speed.fuse
    can = fusable([t.state.model for t in trainers]) and not any(
        t.scaler.is_enabled() for t in trainers
    )
    if not can or mode == "off":
        return False
    if mode == "on":
        return True  # what it was told (a compiled model then trains uncompiled, fused)
    if trainers[0].device.type != "cuda" or trainers[0].speed.compile:
        return False  # the CPU (above); or compiled: the fused step would drop the compile
    try:
        return faster(trainers, parts)[0]
    except torch.cuda.OutOfMemoryError:  # K copies and a K-wide step did not fit: one by one
        torch.cuda.empty_cache()
        return False


def train_epoch(trainers: Sequence, parts: Sequence) -> list[float]:
    """One epoch of each trainer on its part, the steps where every one has a full batch
    fused, the rest one by one; each one's mean train loss (one read for all)."""
    started = time.perf_counter()
    plans = [t.epoch_plan(p) for t, p in zip(trainers, parts, strict=True)]
    size, device = trainers[0].state.config.batch_size, trainers[0].device
    full = min(len(p) for p in parts) // size  # steps at which every model has a full batch
    sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in trainers]
    with true_fp32(device, trainers[0].speed.fast):
        for i in range(full):
            batches = [
                t.batch(p, plan, i * size)
                for t, p, plan in zip(trainers, parts, plans, strict=True)
            ]
            losses = step(trainers, *zip(*batches, strict=True))
            for j, loss in enumerate(losses):
                sums[j] += loss.double() * size
        for j, (t, p, plan) in enumerate(zip(trainers, parts, plans, strict=True)):
            for start in range(full * size, len(p), size):  # the uneven tails, unfused
                x, y = t.batch(p, plan, start)
                sums[j] += t.step(x, y).double() * len(x)
    totals = torch.stack(sums).cpu().tolist()
    seconds, images = time.perf_counter() - started, sum(len(p) for p in parts)
    for t, p in zip(trainers, parts, strict=True):  # the shared time, by each one's share
        t.state.trained = (len(p), seconds * len(p) / max(images, 1))
    return [total / max(len(p), 1) for total, p in zip(totals, parts, strict=True)]


def faster(trainers: Sequence, parts: Sequence, steps: int = 3) -> tuple[bool, float]:
    """A short probe on copies of the models and optimizers (the run's own state is not
    touched): whether a fused step of all K beats K steps one by one on this device, and
    the ratio of their times (sequential / fused)."""
    copies = [copy.copy(t) for t in trainers]
    for c, t in zip(copies, trainers, strict=True):
        c.state = copy.deepcopy(t.state)
        c.forward = c.state.model  # a compiled forward stays with the run
    size = trainers[0].state.config.batch_size
    batches = [c.batch(p, c.epoch_plan(p), 0) for c, p in zip(copies, parts, strict=True)]
    if any(len(x) < size for x, _ in batches):
        return False, 0.0

    def fused() -> None:
        step(copies, *zip(*batches, strict=True))

    def one_by_one() -> None:
        for c, (x, y) in zip(copies, batches, strict=True):
            c.step(x, y)

    timed = {}
    with true_fp32(trainers[0].device, trainers[0].speed.fast):
        for name, run in (("fused", fused), ("one_by_one", one_by_one)):
            run()  # warm-up: cuDNN's choice, the first allocations
            _sync(trainers[0].device)
            started = time.perf_counter()
            for _ in range(steps):
                run()
            _sync(trainers[0].device)
            timed[name] = time.perf_counter() - started
    ratio = timed["one_by_one"] / max(timed["fused"], 1e-9)
    return ratio >= 1.0, ratio


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

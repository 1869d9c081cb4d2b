"""What one child process of `benchmarks.train_step` measures; each prints one JSON row.

Every measurement runs in a fresh process (`benchmarks.runner`), so a crash, a hang or
a process-wide setting (TF32, cuDNN autotuning, dynamo's caches) stays with its row.
Needs torch, numpy and pillow only (plus flairseg): no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flairseg.config import TrainConfig
from flairseg.dataset import Part, load_dataset
from flairseg.engine import Speed, Trainer, evaluation_pass, pick_device, train
from flairseg.evolution import EVOLUTION_SLICES, Evolution, pick_slices, save_epoch
from flairseg.speed import allow_tf32, precision_name
from flairseg.train import default_data


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def subset(part: Part, n: int) -> Part:
    """The first `n` slices of `part`, cycling when it has fewer."""
    index = torch.arange(n) % len(part)
    return Part(
        images=part.images[index],
        masks=part.masks[index],
        mean=part.mean[index],
        std=part.std[index],
        patient=part.patient[index],
        number=part.number[index],
        patients=part.patients,
    )


def count_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    """FLOPs of one forward and backward pass (convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the step


def _time_plain(spec: dict[str, Any], data, device: torch.device) -> tuple[list[float], int | None]:
    """The seed-style loop: seconds of each timed repeat, and the FLOPs of one step."""
    from benchmarks import seed_style

    batch, warmup, steps, repeats = (spec[k] for k in ("batch_size", "warmup", "steps", "repeats"))
    part = subset(data.train, (warmup + steps * repeats) * batch)
    x, y = part.batch(torch.arange(len(part)))
    images, masks = np.ascontiguousarray(x.numpy()), np.ascontiguousarray(y.numpy())
    model = seed_style.build(spec["model"], spec["image_size"]).to(device)
    flops = None
    if spec.get("flops"):
        xb, yb = torch.from_numpy(images[:batch]), torch.from_numpy(masks[:batch])
        flops = count_flops(model, xb.to(device), yb.to(device), torch.nn.BCELoss())
    marks: list[float] = []
    ticks = {warmup + steps * i for i in range(repeats + 1)}

    def on_step(done: int) -> None:
        if done in ticks:
            sync(device)
            marks.append(time.perf_counter())

    loader = seed_style.loader(images, masks, batch)
    seed_style.train_steps(model, loader, device, warmup + steps * repeats, on_step)
    return [b - a for a, b in zip(marks, marks[1:], strict=False)], flops


def _time_ours(spec: dict[str, Any], data, config, device) -> tuple[list[float], int | None, str]:
    """flairseg's Trainer: seconds of each timed epoch of `steps` batches, FLOPs, precision."""
    variant, batch = spec["variant"], spec["batch_size"]
    speed = Speed(fast=variant != "reference", compile=variant == "compile")
    trainer = Trainer(config, device, speed)
    flops = None
    if spec.get("flops"):
        probe = Trainer(config, device, Speed(fast=False))
        xb, yb = data.train.batch(torch.arange(batch), device)
        flops = count_flops(probe.state.model, xb, yb, probe.loss_fn)
        del probe
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    warm = trainer.to_device(subset(data.train, spec["warmup"] * batch))
    timed = trainer.to_device(subset(data.train, spec["steps"] * batch))
    precision = precision_name(device, speed.fast)
    sync(device)
    started = time.perf_counter()
    trainer.train_epoch(warm)
    sync(device)
    seconds = [time.perf_counter() - started]
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        trainer.train_epoch(timed)
        sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds, flops, precision


def measure_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one variant of the training step: images/s (median of the repeats and their
    range), ms/step, peak memory, FLOPs of a step and the precision it ran in."""
    device = pick_device(spec["device"])
    variant, batch, steps = spec["variant"], spec["batch_size"], spec["steps"]
    knobs = dict(spec.get("knobs", {}))
    if variant == "instance":
        knobs["norm"] = "instance"
    config = TrainConfig(
        model=spec["model"],
        image_size=spec["image_size"],
        batch_size=batch,
        augment=variant == "augment",
        **knobs,
    )
    data = load_dataset(default_data(), config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if variant.startswith("plain"):
        precision = "tf32" if variant == "plain_tf32" else "fp32"
        allow_tf32(precision == "tf32")
        timed, flops = _time_plain(spec, data, device)
        warm_s = None
    else:
        seconds, flops, precision = _time_ours(spec, data, config, device)
        warm_s, timed = seconds[0], seconds[1:]
    rates = sorted(batch * steps / s for s in timed)
    step_s = statistics.median(timed) / steps
    result = {
        "model": spec["model"],
        "variant": variant,
        "precision": precision,
        "images_per_s": round(statistics.median(rates), 2),
        "images_per_s_range": [round(rates[0], 2), round(rates[-1], 2)],
        "repeats": len(timed),
        "step_ms": round(step_s * 1000, 2),
        "peak_mb": round(peak_memory_mb(device), 1),
        "threads": torch.get_num_threads(),
    }
    if warm_s is not None:
        result["warmup_s"] = round(warm_s, 2)
    if variant == "compile":
        # the warm-up steps minus what they cost once compiled
        result["compile_s"] = round(warm_s - spec["warmup"] * step_s, 2)
    if flops is not None:
        result["flops_per_step"] = flops
    return result


# --------------------------------------------------------------------------- the rest


def measure_peaks(spec: dict[str, Any]) -> dict[str, Any]:
    """The device's matrix-product rate in each precision (TFLOP/s), the measured peak
    MFU is also given against: an n x n x n product, the mean of 10 (fp32) or 100 after 3."""
    device = pick_device(spec["device"])
    n = spec.get("n", 8192)
    out: dict[str, Any] = {"n": n}
    for precision, dtype in (("fp32", torch.float32), ("tf32", torch.float32), ("bf16", None)):
        allow_tf32(precision == "tf32")
        a = torch.randn(n, n, device=device, dtype=dtype or torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=dtype or torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(device)
        # long enough to see the clocks settle: ten fp32 products take ~0.2 s on an H100,
        # ten bf16 ones only ~15 ms
        iters = 10 if precision == "fp32" else 100
        started = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        tflops = 2 * n**3 * iters / (time.perf_counter() - started) / 1e12
        out[precision] = float(f"{tflops:.4g}")
    return out


def sync_check(spec: dict[str, Any]) -> dict[str, Any]:
    """One training epoch's batches and one evaluation pass over val under
    `torch.cuda.set_sync_debug_mode("error")`: any host-device sync inside them raises
    (and fails this row, naming the call)."""
    device = pick_device(spec["device"])
    config = TrainConfig(
        model=spec["model"], image_size=spec["image_size"], augment=True, **spec.get("knobs", {})
    )
    data = load_dataset(default_data(), config)
    trainer = Trainer(config, device, Speed())
    part, val = trainer.to_device(data.train), trainer.to_device(data.val)
    trainer.train_epoch(part)  # cuDNN's autotuning and the first allocations, outside the check
    evaluation_pass(trainer.state.model, val, trainer.loss_fn, device, amp=True)
    sync(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        total = trainer.train_batches(part)
        evaluation_pass(trainer.state.model, val, trainer.loss_fn, device, amp=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return {"model": spec["model"], "batches": -(-len(part) // config.batch_size),
            "syncs": 0, "loss": round(float(total) / len(part), 4)}  # fmt: skip


def agreement(spec: dict[str, Any]) -> dict[str, Any]:
    """The same config trained with the fast path and with the fp32 reference, per seed."""
    device = pick_device(spec["device"])
    base = TrainConfig.from_dict(spec["config"])
    data = load_dataset(default_data(), base)
    scores: dict[str, list[float]] = {"fast": [], "reference": []}
    for seed in range(spec["seeds"]):
        for label, speed in (("fast", Speed()), ("reference", Speed(fast=False))):
            result = train(base.replace(seed=seed), data, device=device, speed=speed)
            scores[label].append(round(result.metrics["val_dice"], 4))
    return {
        "precisions": {
            "fast": precision_name(device, True),
            "reference": precision_name(device, False),
        },
        "val_dice": scores,
    }


def trial_slot(spec: dict[str, Any]) -> dict[str, Any]:
    """Trials back to back in this process (a reused Ray actor), each doing per epoch what
    a study's trial does (study.trainable): train, score val, predict the evolution slices,
    save the checkpoint and the evolution, and persist them with the metrics the way
    Ray Tune persists a reported checkpoint (a copy into the trial's storage folder)."""
    device = pick_device(spec["device"])
    config = TrainConfig(image_size=spec["image_size"], epochs=spec["epochs"], width=spec["width"])
    data = load_dataset(default_data(), config)
    index = pick_slices(data.val, EVOLUTION_SLICES)
    inputs, _ = data.val.batch(torch.tensor(index))
    torch.zeros(1, device=device)  # the CUDA context before the clock starts
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="flairseg-packing-") as storage:
        for seed in range(spec["trials"]):
            evolution = Evolution.of(data.val, index)
            trial_dir = Path(storage, f"trial_{seed}")

            def on_epoch(report, evolution=evolution, trial_dir=trial_dir) -> None:
                with tempfile.TemporaryDirectory(prefix="flairseg-ckpt-") as folder:
                    save_epoch(report, evolution, inputs, folder)
                    target = trial_dir / f"checkpoint_{report.epoch:06d}"
                    shutil.copytree(folder, target)
                with (trial_dir / "result.json").open("a") as f:
                    f.write(repr(report.metrics) + "\n")

            train(config.replace(seed=seed), data, on_epoch=on_epoch, device=device)
    return {"start": start, "end": time.time(), "trials": spec["trials"]}


def folds_epoch(spec: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.folds_epoch import folds_epoch as measure  # it imports this module

    return measure(spec)


def step_bound(spec: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.step_bound import step_bound as measure  # it imports this module

    return measure(spec)


KINDS = {
    "folds_epoch": folds_epoch,
    "step_bound": step_bound,
    "step": measure_step,
    "peaks": measure_peaks,
    "sync_check": sync_check,
    "agreement": agreement,
    "trial_slot": trial_slot,
}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process; torch's threads as the spec says (the CPUs Ray
    would give a trial), before anything runs."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    return KINDS[spec["kind"]](spec)

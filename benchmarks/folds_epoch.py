"""One epoch of a cross-validated trial's K fold models, fused or one by one (a child of
`benchmarks.train_step --fused`): seconds of training, of the val passes and of the
checkpoint, each the median of `repeats` epochs after one untimed epoch.

The K folds are equal parts of the default data set's train slices (`--fold-slices` each,
cycled), so every step fuses; each fold is scored on the val part, and the K states are
written as one checkpoint, as flairseg.cv does per epoch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import peak_memory_mb, subset, sync
from flairseg import fused
from flairseg.checkpoint import write_checkpoint
from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import Speed, Trainer, evaluate, pick_device
from flairseg.train import default_data


def folds_epoch(spec: dict[str, Any]) -> dict[str, Any]:
    device = pick_device(spec["device"])
    config = TrainConfig.from_dict(spec["config"])
    data = load_dataset(default_data(), config)
    k, n = spec["k"], spec["fold_slices"]
    trainers = [Trainer(config.replace(seed=i), device, Speed(fuse=spec["path"])) for i in range(k)]
    parts = [trainers[0].to_device(subset(data.train, n)) for _ in range(k)]
    val = trainers[0].to_device(data.val)
    timed: dict[str, list[float]] = {"train": [], "val": [], "checkpoint": []}
    with tempfile.TemporaryDirectory(prefix="flairseg-folds-") as folder:
        for epoch in range(spec["repeats"] + 1):
            seconds = _epoch(trainers, parts, val, spec["path"] == "on", Path(folder), device)
            if epoch:  # the first: cuDNN's choice, the first allocations
                for key, value in seconds.items():
                    timed[key].append(value)
    medians = {f"{key}_s": statistics.median(values) for key, values in timed.items()}
    steps = k * -(-n // config.batch_size)
    return {
        "model": spec["model"],
        "k": k,
        "path": "fused" if spec["path"] == "on" else "one by one",
        **medians,
        "epoch_s": sum(medians.values()),
        "model_steps_per_s": steps / medians["train_s"],
        "peak_mb": peak_memory_mb(device),
    }


def _epoch(trainers, parts, val, fuse: bool, folder: Path, device) -> dict[str, float]:
    sync(device)
    started = time.perf_counter()
    if fuse:
        fused.train_epoch(trainers, parts)
    else:
        for t, p in zip(trainers, parts, strict=True):
            t.train_epoch(p)
    sync(device)
    trained = time.perf_counter()
    for t in trainers:
        evaluate(t.state.model, val, t.loss_fn, "val", device, amp=t.speed.fast)
    sync(device)
    scored = time.perf_counter()
    write_checkpoint({"folds": [t.state.state_dict() for t in trainers]}, folder / "ckpt.pt")
    saved = time.perf_counter()
    return {"train": trained - started, "val": scored - trained, "checkpoint": saved - scored}

"""What bounds today's training step? (a child of `benchmarks.train_step --bound`)

The step (the fast path, as a trial trains) at batch 16, 32 and 64: if its time grows
with the batch, the device's arithmetic bounds it; if it stays flat, launches and host
work do. Then, on CUDA, the same step captured once as a CUDA graph and replayed (static
input, Adam with `capturable=True`): what a step costs with no launch overhead at all.
Each figure is the median of `repeats` samples of `steps` steps after `warmup`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.measure import sync
from flairseg.config import TrainConfig
from flairseg.engine import Speed, Trainer, pick_device
from flairseg.speed import mixed_precision


def step_bound(spec: dict[str, Any]) -> dict[str, Any]:
    device = pick_device(spec["device"])
    rows = {}
    for batch in spec["batches"]:
        config = TrainConfig.from_dict(spec["config"]).replace(batch_size=batch)
        trainer = Trainer(config, device, Speed())
        x, y = _batch(config, device, trainer)
        rows[f"eager_b{batch}_ms"] = _median_ms(
            lambda t=trainer, x=x, y=y: t.step(x, y), spec, device
        )
    if device.type == "cuda":
        config = TrainConfig.from_dict(spec["config"]).replace(batch_size=spec["batches"][0])
        replay = _graphed_step(config, device)
        rows[f"graph_b{config.batch_size}_ms"] = _median_ms(replay, spec, device)
    return {"model": spec["model"], **{k: round(v, 3) for k, v in rows.items()}}


def _batch(config: TrainConfig, device, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = (config.batch_size, config.channels, config.image_size, config.image_size)
    x = torch.randn(size, generator=g).to(device)
    y = (torch.rand(size[0], 1, *size[2:], generator=g) > 0.8).float().to(device)
    return x.contiguous(memory_format=torch.channels_last), y


def _median_ms(step, spec: dict[str, Any], device) -> float:
    for _ in range(spec["warmup"]):
        step()
    samples = []
    for _ in range(spec["repeats"]):
        sync(device)
        started = time.perf_counter()
        for _ in range(spec["steps"]):
            step()
        sync(device)
        samples.append((time.perf_counter() - started) / spec["steps"] * 1000)
    return statistics.median(samples)


def _graphed_step(config: TrainConfig, device):
    """The whole step (forward, loss, backward, Adam) captured as one CUDA graph; its
    replay. Warm-up on a side stream first, as CUDA graph capture requires."""
    trainer = Trainer(config, device, Speed())
    model, loss_fn = trainer.state.model, trainer.loss_fn
    # fused, as the eager rows' Adam (flairseg.engine), and capturable: its step count stays
    # on the device
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True, capturable=True)
    x, y = _batch(config, device, trainer)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        with mixed_precision(device, True):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        optimizer.step()

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    held = (trainer, optimizer, x, y)  # a graph keeps no tensor alive: its replays write here

    def replay(held: tuple = held) -> None:
        graph.replay()

    return replay

"""An epoch's passes read nothing back from the device batch by batch: on CUDA each read
(`.item()`, `float()`, `bool()` of a tensor: aten._local_scalar_dense) makes the host wait
for the GPU. Counted here on the CPU, where the same calls go through the same operator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flairseg import metrics as M
from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from flairseg.engine import Trainer, evaluate, evaluation_pass

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}


class CountReads(TorchDispatchMode):
    """Counts the operators that read a tensor's values back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func in READS
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_a_read() -> None:
    with CountReads() as counted:
        float(torch.ones(2).sum())
        torch.ones(2).sum().item()
    assert counted.reads == 2


@pytest.mark.parametrize("model", ["unet", "setr"])
def test_an_evaluation_pass_and_a_training_pass_read_nothing_back(
    phantom_dir: Path, model: str
) -> None:
    knobs = {"width": 4} if model == "unet" else {"depth": 1, "dim": 32, "heads": 2}
    config = TrainConfig(model=model, image_size=32, batch_size=8, epochs=1, **knobs)
    data = load_dataset(phantom_dir, config)
    trainer = Trainer(config)
    assert len(data.val) > 8 and len(data.train) > 8  # several batches
    with CountReads() as counted:
        evaluation_pass(trainer.state.model, data.val, trainer.loss_fn, batch_size=8)
    assert counted.reads == 0
    with CountReads() as counted:
        trainer.train_batches(data.train)
    # torch's CPU Adam reads each parameter's step count (the fused CUDA Adam the fast
    # path takes reads none: benchmarks.train_step --sync-check); nothing else does
    steps = -(-len(data.train) // config.batch_size)
    assert counted.reads == steps * len(list(trainer.state.model.parameters()))


def test_evaluate_reads_once_and_scores_as_batch_by_batch_reads_did(phantom_dir: Path) -> None:
    config = TrainConfig(image_size=32, width=4, batch_size=8, epochs=1)
    data = load_dataset(phantom_dir, config)
    trainer = Trainer(config)
    trainer.train_batches(data.train)
    model, loss_fn, part = trainer.state.model, trainer.loss_fn, data.val
    got = evaluate(model, part, loss_fn, "val", batch_size=8)

    # the reference: each batch's loss read back at once, the counts joined on the host
    model.eval()
    loss_sum, counts = 0.0, []
    with torch.no_grad():
        for start in range(0, len(part), 8):
            x, y = part.batch(torch.arange(start, min(start + 8, len(part))))
            logits = model(x)
            loss_sum += float(loss_fn(logits.float(), y)) * len(x)
            counts.append(M.confusion(torch.sigmoid(logits.float()), y))
    per_slice = M.Confusion.cat(counts)
    assert got["val_loss"] == pytest.approx(loss_sum / len(part), rel=1e-12)
    for key, value in M.micro(per_slice).items():
        assert got[f"val_{key}"] == value
    assert got["val_volume_dice"] == M.volume_dice(per_slice, part.patient)


def test_evaluate_reads_as_much_whatever_the_number_of_batches(phantom_dir: Path) -> None:
    """Its reads are the scores' own, on the host, after the one copy: none per batch."""
    config = TrainConfig(image_size=32, width=4, batch_size=8, epochs=1)
    data = load_dataset(phantom_dir, config)
    trainer = Trainer(config)
    reads = []
    for batch_size in (4, 16):
        with CountReads() as counted:
            evaluate(trainer.state.model, data.val, trainer.loss_fn, "val", batch_size=batch_size)
        reads.append(counted.reads)
    assert reads[0] == reads[1], reads

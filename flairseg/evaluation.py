"""Scoring a model on a part: its loss, the micro scores of every pixel, the mean
per-patient volume Dice; the device does the passes, the host reads their counts once."""

from __future__ import annotations

import torch
from torch import nn

from flairseg import metrics as M
from flairseg.dataset import Part
from flairseg.speed import mixed_precision, true_fp32


def evaluate(
    model: nn.Module,
    part: Part,
    loss_fn: nn.Module,
    prefix: str,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    amp: bool = True,
) -> dict[str, float]:
    """Loss, micro scores over every pixel of `part`, and the mean per-patient volume Dice.

    Keys: {prefix}_loss, {prefix}_pixel_accuracy, {prefix}_mean_accuracy, {prefix}_iou,
    {prefix}_dice, {prefix}_volume_dice. `amp` as in `predict_probs`.
    """
    loss_sum, per_slice = evaluation_pass(model, part, loss_fn, device, batch_size, amp)
    # the pass's one device-to-host read: its loss and every slice's counts together
    host = torch.cat([loss_sum.reshape(1), *per_slice]).cpu()
    per_slice = M.Confusion(*host[1:].reshape(4, -1))
    result = {f"{prefix}_loss": float(host[0]) / max(len(part), 1)}
    result.update({f"{prefix}_{k}": v for k, v in M.micro(per_slice).items()})
    result[f"{prefix}_volume_dice"] = M.volume_dice(per_slice, part.patient.cpu())
    return result


@torch.no_grad()  # scores only: no graph kept across the batches
def evaluation_pass(
    model: nn.Module,
    part: Part,
    loss_fn: nn.Module,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    amp: bool = True,
) -> tuple[torch.Tensor, M.Confusion]:
    """`model` over `part`, batch by batch, nothing read back: the summed loss (float64)
    and each slice's confusion counts, left on the device (no host-device sync)."""
    model.eval()
    device = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = []
    for start in range(0, len(part), batch_size):
        index = torch.arange(start, min(start + batch_size, len(part)), device=part.images.device)
        x, y = part.batch(index, device)
        with true_fp32(device, amp), mixed_precision(device, amp):
            logits = model(x)
        loss_sum += loss_fn(logits.float(), y).double() * len(index)
        counts.append(M.confusion(torch.sigmoid(logits.float()), y))
    return loss_sum, M.Confusion(*(torch.cat([c[i] for c in counts]) for i in range(4)))

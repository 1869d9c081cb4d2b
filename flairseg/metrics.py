"""Segmentation scores from one confusion count, as DESIGN.md defines them.

Threshold 0.5 on probabilities (a binary mask passes through unchanged):

    pixel_accuracy = (TP + TN) / N
    mean_accuracy  = mean of the class recalls TP/(TP+FN) and TN/(TN+FP)
    iou            = TP / (TP + FP + FN)
    dice           = 2TP / (2TP + FP + FN)

Empty-mask rule: a ratio whose denominator is 0 means there was nothing to find
and nothing was wrongly found, so it scores 1 (an empty mask with an empty
prediction has iou = dice = 1). In `mean_accuracy` a class absent from the target
has no recall and is left out of the mean (an all-empty target predicted empty
scores 1; predicted all-full it scores 0).

Per-sample functions return unreduced tensors of shape (N,); `micro` and
`volume_dice` reduce them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

SCORE_KEYS = ("pixel_accuracy", "mean_accuracy", "iou", "dice")


class Confusion(NamedTuple):
    """Confusion counts, each a float64 tensor of shape (N,) (one entry per sample)."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    @classmethod
    def cat(cls, parts: list[Confusion]) -> Confusion:
        """Join the per-sample counts of several batches into one Confusion."""
        return cls(*(torch.cat([p[i].cpu() for p in parts]) for i in range(4)))

    def sum(self) -> Confusion:
        return Confusion(*(c.sum().reshape(1) for c in self))


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected shape (N,1,H,W) or (N,H,W), got {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected shape (N,1,H,W) or (N,H,W), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def confusion(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> Confusion:
    """Per-sample confusion counts.

    Shape: pred (probabilities or binary) and target (binary), both (N,1,H,W) or (N,H,W).
    A pixel is predicted positive when pred >= threshold; target positive when > 0.5.
    """
    p = _flatten(pred) >= threshold
    t = _flatten(target) > 0.5
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    tp = (p & t).sum(1, dtype=torch.float64)
    fp = (p & ~t).sum(1, dtype=torch.float64)
    fn = (~p & t).sum(1, dtype=torch.float64)
    tn = (~p & ~t).sum(1, dtype=torch.float64)
    return Confusion(tp, fp, fn, tn)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den, and 1 where den == 0 (the empty-mask rule)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))


def scores_from_confusion(c: Confusion) -> dict[str, torch.Tensor]:
    """The four scores for each entry of `c`, tensors of shape (N,)."""
    n = c.tp + c.fp + c.fn + c.tn
    has_pos = (c.tp + c.fn) > 0
    has_neg = (c.tn + c.fp) > 0
    recall_pos = _ratio(c.tp, c.tp + c.fn)
    recall_neg = _ratio(c.tn, c.tn + c.fp)
    present = has_pos.double() + has_neg.double()
    mean_acc = (recall_pos * has_pos + recall_neg * has_neg) / present.clamp(min=1)
    return {
        "pixel_accuracy": (c.tp + c.tn) / n.clamp(min=1),
        "mean_accuracy": mean_acc,
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn),
        "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
    }


def per_sample_scores(
    pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Scores of each slice separately: dict of tensors of shape (N,)."""
    return scores_from_confusion(confusion(pred, target, threshold))


def micro(c: Confusion) -> dict[str, float]:
    """Scores of the summed counts (every pixel of the split pooled)."""
    return {k: float(v[0]) for k, v in scores_from_confusion(c.sum()).items()}


def scores(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Micro scores over all pixels of pred and target, shape (N,1,H,W) or (N,H,W)."""
    return micro(confusion(pred, target, threshold))


def per_patient(c: Confusion, patient: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each patient's volume scores: `c` holds per-slice counts (N,), `patient` an integer
    id per slice (N,); the slices of one patient are pooled into one volume. Keys `ids`
    (the sorted patient ids, (P,)), `volume_dice` and `iou` ((P,) float64); a volume with
    an empty mask and an empty prediction scores 1 on both."""
    ids, inverse = torch.unique(patient, return_inverse=True)
    tp = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, c.tp)
    fp = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, c.fp)
    fn = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, c.fn)
    return {
        "ids": ids,
        "volume_dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
    }


def volume_dice(c: Confusion, patient: torch.Tensor) -> float:
    """Mean over patients of each patient's volume Dice (`per_patient`).

    `c` holds per-slice counts (N,), `patient` an integer id per slice (N,). The slices
    of one patient are pooled into one volume; a volume with an empty mask and an
    empty prediction scores 1.
    """
    return float(per_patient(c, patient)["volume_dice"].mean())

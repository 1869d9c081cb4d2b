"""Per-patient scores of a trained model: what a paired comparison of two configs needs.

Two configs scored on the same patients can be compared patient by patient (the study's
confirmation stage does so); one number over a split hides how much of a difference is
one patient. A patient's score pools all its slices into one volume (flairseg.metrics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flairseg import metrics as M
from flairseg.dataset import Part

PATIENT_KEYS = ("volume_dice", "iou")


@torch.no_grad()
def patient_scores(
    predict: Callable[[torch.Tensor], torch.Tensor], part: Part, batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """{patient name: {"volume_dice": d, "iou": i}} over the patients of `part`.

    `predict` maps standardised images (B, C, S, S) to probabilities (B, 1, S, S), as
    `EpochReport.predict` does; threshold 0.5 as everywhere.
    """
    counts = []
    for start in range(0, len(part), batch_size):
        x, y = part.batch(torch.arange(start, min(start + batch_size, len(part))))
        counts.append(M.confusion(predict(x).float().cpu(), y))
    if not counts:
        return {}
    scores = M.per_patient(M.Confusion.cat(counts), part.patient.cpu())
    return {
        part.patients[int(i)]: {key: float(scores[key][k]) for key in PATIENT_KEYS}
        for k, i in enumerate(scores["ids"])
    }

"""Metrics against hand-computed confusion tables, including the empty-mask rule."""

from __future__ import annotations

import pytest
import torch

from flairseg import metrics as M

# a 2x4 slice: TP=1 (0,0), FP=1 (0,1), FN=1 (0,2), TN=5
PRED = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]])
TARGET = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])


def test_confusion_and_scores_by_hand() -> None:
    c = M.confusion(PRED[None], TARGET[None])
    assert [float(x) for x in c] == [1, 1, 1, 5]
    s = M.scores(PRED[None], TARGET[None])
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)
    assert s["mean_accuracy"] == pytest.approx((1 / 2 + 5 / 6) / 2)  # mean of the two class recalls
    assert s["iou"] == pytest.approx(1 / 3)
    assert s["dice"] == pytest.approx(2 / 4)


def test_dice_two_thirds() -> None:
    pred = torch.tensor([[[1.0, 1, 0, 0]]])
    target = torch.tensor([[[1.0, 0, 0, 0]]])
    assert M.scores(pred, target)["dice"] == pytest.approx(2 / 3)
    assert M.scores(pred, target)["iou"] == pytest.approx(1 / 2)


def test_threshold_on_probabilities() -> None:
    probs = torch.tensor([[[0.5, 0.49, 0.9, 0.1]]])
    target = torch.tensor([[[1.0, 1, 1, 0]]])
    s = M.scores(probs, target)  # 0.5 counts as positive: TP=2, FN=1, TN=1
    assert s["dice"] == pytest.approx(4 / 5)
    assert M.scores(probs, target, threshold=0.95)["dice"] == 0.0


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (0.0, 0.0, {"pixel_accuracy": 1, "mean_accuracy": 1, "iou": 1, "dice": 1}),
        (1.0, 1.0, {"pixel_accuracy": 1, "mean_accuracy": 1, "iou": 1, "dice": 1}),
        (1.0, 0.0, {"pixel_accuracy": 0, "mean_accuracy": 0, "iou": 0, "dice": 0}),
        (0.0, 1.0, {"pixel_accuracy": 0, "mean_accuracy": 0, "iou": 0, "dice": 0}),
    ],
    ids=["empty-empty", "full-full", "empty-target-full-pred", "full-target-empty-pred"],
)
def test_all_empty_and_all_full(pred: float, target: float, expected: dict[str, float]) -> None:
    s = M.scores(torch.full((2, 1, 4, 4), pred), torch.full((2, 1, 4, 4), target))
    assert s == pytest.approx(expected)


def test_per_sample_is_unreduced_and_micro_pools_pixels() -> None:
    pred = torch.stack([PRED, torch.zeros(2, 4)])[:, None]
    target = torch.stack([TARGET, torch.zeros(2, 4)])[:, None]
    per = M.per_sample_scores(pred, target)
    assert per["dice"].shape == (2,)
    assert per["dice"].tolist() == pytest.approx([0.5, 1.0])  # second slice: empty-empty scores 1
    assert M.scores(pred, target)["dice"] == pytest.approx(
        0.5
    )  # micro: the empty slice adds no counts
    assert M.scores(pred, target)["pixel_accuracy"] == pytest.approx(14 / 16)


def test_volume_dice_is_mean_over_patients() -> None:
    # patient 0: slices 0 and 1 pooled -> TP=1, FP=1, FN=1 -> 0.5; patient 1: empty-empty -> 1
    pred = torch.stack([PRED, torch.zeros(2, 4), torch.zeros(2, 4)])
    target = torch.stack([TARGET, torch.zeros(2, 4), torch.zeros(2, 4)])
    c = M.confusion(pred, target)
    assert M.volume_dice(c, torch.tensor([0, 0, 1])) == pytest.approx(0.75)
    assert M.volume_dice(c, torch.tensor([5, 5, 5])) == pytest.approx(0.5)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        M.confusion(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="differ"):
        M.confusion(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))

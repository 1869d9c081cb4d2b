"""Segmentation losses on logits: soft Dice, BCE and their Combo mix.

All losses take `logits` and `target` of shape (B, 1, H, W) (or any equal shapes),
target in {0, 1}, and return a scalar tensor. BCE uses the logits directly
(`binary_cross_entropy_with_logits`), which stays finite where sigmoid saturates.

A loss is one builder registered with its knobs, as a model is:

    @LOSSES.register("combo", knobs=[Knob("alpha", 0.5, "weight of BCE ...")])
    def _combo(alpha: float) -> nn.Module:

Each knob becomes a TrainConfig field (holding its preset), a `flairseg.train` flag and a
search-file key of the same name. A key two losses share has one preset.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flairseg.errors import ConfigError
from flairseg.registry import Knob, KnobRegistry

LOSSES = KnobRegistry("loss", one_preset=True)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch: 1 - (2*sum(p*t) + s) / (sum(p) + sum(t) + s).

    Shape: probs and target of equal shape; reduced over every element. The smoothing term
    `s` makes an empty target with an empty prediction score a loss of 0, not 0/0.
    """
    probs = probs.float()
    target = target.float()
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha} is outside [0, 1] (0 is pure Dice, 1 pure BCE)")
    return float(alpha)


class DiceLoss(nn.Module):
    """1 - soft Dice of sigmoid(logits) against the target."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(torch.sigmoid(logits.float()), target)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, mean over elements."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class ComboLoss(nn.Module):
    """alpha * BCE + (1 - alpha) * (1 - soft Dice); alpha=0 is pure Dice, alpha=1 pure BCE."""

    def __init__(self, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target.float())
        dice = soft_dice_loss(torch.sigmoid(logits), target)
        return self.alpha * bce + (1.0 - self.alpha) * dice


@LOSSES.register("dice")
def _dice() -> nn.Module:
    return DiceLoss()


@LOSSES.register("bce")
def _bce() -> nn.Module:
    return BCELoss()


@LOSSES.register(
    "combo", knobs=[Knob("alpha", 0.5, "weight of BCE: alpha*BCE + (1-alpha)*Dice, in [0, 1]")]
)
def _combo(alpha: float) -> nn.Module:
    return ComboLoss(alpha)


def build_loss(name: str, **params: Any) -> nn.Module:
    """The loss called `name`, given its own knobs as keywords; None keeps a knob's preset.

    A knob of another loss fails naming the loss's knobs (`TrainConfig.build_loss()` passes
    only the loss's own).
    """
    return LOSSES.build(name, {}, params)

"""The fold models of a cross-validated run as one model: the mean of their probabilities."""

from __future__ import annotations

import torch
from torch import nn

# probabilities are clipped this far from 0 and 1 before the logit, so it stays finite
_EDGE = 1e-6


class Ensemble(nn.Module):
    """K models of one config; `probs(x)` is the mean of sigmoid(member(x)).

    `forward` returns the logit of that mean, so code that expects a model's logits
    (losses, `evaluate`) scores the ensemble as it scores one model.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            p = torch.sigmoid(member(x).float())
            total = p if total is None else total + p
        return total / len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.probs(x).clamp(_EDGE, 1 - _EDGE))

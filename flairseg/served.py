"""A trained model as served: raw slices of one patient in, tumour probabilities out.

What a model registry hands to someone who never ran this project: `Served(model)` takes
an image batch (N, C, S, S), float32, the raw intensities (0-255) of one patient's slices
at the model's image size and channels, standardises them together as one volume (as
training and `flairseg.predict` do) and returns sigmoid probabilities (N, 1, S, S); for a
cross-validated model, the mean of its fold models' probabilities. Plain torch: the
registry layer (study.register) logs it as an MLflow pytorch model.
"""

from __future__ import annotations

import torch
from torch import nn

from flairseg.ensemble import Ensemble


class Served(nn.Module):
    """`model` (a segmentation model or an Ensemble) behind volume standardisation and a
    sigmoid."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float64)
        # flairseg.dataset.volume_stats: one mean and std per channel over the volume
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1.0)
        x = ((x - mean) / std).to(torch.float32)
        if isinstance(self.model, Ensemble):
            return self.model.probs(x)
        return torch.sigmoid(self.model(x).float())

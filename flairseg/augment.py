"""Light augmentation of train batches on their own device: flips, small rotation and scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def draw(n: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers `n` samples' augmentation needs, (n, 4) on the CPU.

    Drawing an epoch's numbers at once gives the same numbers as drawing them batch by
    batch (the generator's stream is sequential), so a seeded run repeats either way.
    """
    return torch.rand(n, 4, generator=generator)


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator | torch.Tensor,
    max_degrees: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right and up-down flips, rotation in +-max_degrees, zoom in `scale`.

    Shape: images (B, C, H, W) float, masks (B, 1, H, W) float in {0, 1}; returns the
    same shapes, masks still binary. One affine warp per sample. The random numbers come
    from `generator` (on the CPU) so a seeded run repeats exactly, or are given as a
    (B, 4) tensor from `draw`, on any device: then nothing is copied to the device.
    """
    b = images.shape[0]
    draws = generator if isinstance(generator, torch.Tensor) else draw(b, generator)
    draws = draws.to(images.device, images.dtype)
    angle = (draws[:, 0] * 2 - 1) * math.radians(max_degrees)
    zoom = scale[0] + draws[:, 1] * (scale[1] - scale[0])
    flip_x = torch.where(draws[:, 2] < 0.5, -1.0, 1.0)
    flip_y = torch.where(draws[:, 3] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack(
        [
            torch.stack([cos * flip_x, -sin * flip_y, zero], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, zero], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return images, (masks >= 0.5).to(masks.dtype)

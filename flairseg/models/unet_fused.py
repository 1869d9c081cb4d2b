"""K same-shaped U-Nets as one model K times wider (flairseg.fused trains with it).

A convolution becomes a grouped convolution over K·C channels (group k: model k's
weights, concatenated anew each call so gradients land in each model's parameters), a
transposed convolution likewise; batch, instance and group norm work per channel or per
group of channels, so over K·C channels they are the K models' norms side by side (batch
norm's running statistics written back to each model); ReLU and max-pooling are per
channel. Model k's batch is channels k·C_in..(k+1)·C_in of the input, its logits
channel k of the output. In float64 a fused step equals K steps bit for bit; in float32
they differ by the kernels' rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flairseg.models.unet import InstanceNorm2d, UNet


def fusable(models: Sequence[nn.Module]) -> bool:
    """Whether `models` can run fused: two or more U-Nets of one shape."""
    if len(models) < 2 or not all(type(m) is UNet for m in models):
        return False
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
    return all(s == shapes[0] for s in shapes)


def _cat(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(list(tensors))


def _conv(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    first = layers[0]
    weight, bias = _cat([m.weight for m in layers]), _cat([m.bias for m in layers])
    if isinstance(first, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, bias, first.stride, groups=len(layers))
    return F.conv2d(x, weight, bias, first.stride, first.padding, groups=len(layers))


def _norm(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    first, k = layers[0], len(layers)
    weight = _cat([getattr(m, "weight", None) for m in layers])
    bias = _cat([getattr(m, "bias", None) for m in layers])
    if isinstance(first, nn.BatchNorm2d):
        return _batch_norm(layers, x, weight, bias)
    if isinstance(first, InstanceNorm2d):  # as InstanceNorm2d.forward, K·C channels wide
        x = x.float()
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return (x - mean) * (weight[:, None, None] * torch.rsqrt(var + first.eps)) + bias[
            :, None, None
        ]
    if isinstance(first, nn.GroupNorm):
        return F.group_norm(x, k * first.num_groups, weight, bias, first.eps)
    return x  # nn.Identity


def _batch_norm(
    layers: Sequence[nn.Module], x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Batch norm over K·C channels; in training the running statistics it updates are
    copied back into each model's buffers, as each model's own norm would have left them."""
    first = layers[0]
    mean = torch.cat([m.running_mean for m in layers])
    var = torch.cat([m.running_var for m in layers])
    out = F.batch_norm(x, mean, var, weight, bias, first.training, first.momentum, first.eps)
    if first.training:
        with torch.no_grad():
            chunks = zip(layers, mean.chunk(len(layers)), var.chunk(len(layers)), strict=True)
            for m, m_mean, m_var in chunks:
                m.running_mean.copy_(m_mean)
                m.running_var.copy_(m_var)
                m.num_batches_tracked.add_(1)
    return out


def _block(blocks: Sequence[nn.Sequential], x: torch.Tensor) -> torch.Tensor:
    """A ConvBlock of each model, fused: conv, norm, ReLU, twice."""
    for layers in zip(*blocks, strict=True):
        first = layers[0]
        if isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
            x = _conv(layers, x)
        elif isinstance(first, nn.ReLU):
            x = F.relu(x)
        else:
            x = _norm(layers, x)
    return x


def _join(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Each model's channels of `a` then of `b`, model by model (its skip concatenation)."""
    n, _, h, w = a.shape
    joined = torch.cat([a.reshape(n, k, -1, h, w), b.reshape(n, k, -1, h, w)], dim=2)
    return joined.reshape(n, -1, h, w)


def forward(models: Sequence[UNet], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each model's logits on its own batch (all of one size), in one fused pass."""
    k = len(models)
    n, c, h, w = xs[0].shape
    x = torch.stack(list(xs), dim=1).reshape(n, k * c, h, w)
    skips = []
    for blocks in zip(*(m.down for m in models), strict=True):
        x = _block(blocks, x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
    x = _block([m.bottom for m in models], x)
    ups = zip(*(m.up for m in models), strict=True)
    merges = zip(*(m.merge for m in models), strict=True)
    for up, merge, skip in zip(ups, merges, reversed(skips), strict=True):
        x = _block(merge, _join(_conv(up, x), skip, k))
    logits = _conv([m.head for m in models], x)  # (n, k, h, w): channel k is model k's
    return list(logits.unsqueeze(2).unbind(1))

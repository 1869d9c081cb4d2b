"""The seed's U-Net: conv blocks down with max-pooling, transposed convs up, skip concatenation.

Preset (the course project's model): two pooling levels, 64-128-256 channels, ReLU.
`depth` is the number of pooling levels, `width` the channels of the first level
(doubled at each level), `norm` the normalisation after each conv.
"""

from __future__ import annotations

import torch
from torch import nn

from flairseg.errors import ConfigError
from flairseg.models.registry import MODELS, init_head
from flairseg.registry import Knob

NORMS = ("none", "batch", "instance", "group")


class InstanceNorm2d(nn.Module):
    """nn.InstanceNorm2d(affine=True) that keeps its input's memory layout.

    torch's instance norm runs as a batch norm over a (1, N*C, H, W) view, so it returns
    a contiguous tensor: after every one of them a channels_last step (the fast path)
    pays two layout copies. Here the statistics come from one reduction over H and W
    and the rest is elementwise, which keeps channels_last. In fp32, as autocast runs
    instance norm. Same parameters and state-dict keys (weight, bias) as torch's.
    Shape: (B, C, H, W) -> (B, C, H, W), float32.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[:, None, None]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return InstanceNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 convs, each followed by the normalisation and ReLU."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Shape: (B, in_channels, H, W) -> logits (B, 1, H, W); H and W divisible by 2**depth.

    The presets are declared where `build_unet` registers; it checks the settings.
    """

    def __init__(self, in_channels: int, depth: int, width: int, norm: str) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(ConvBlock(cin, c, norm))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottom = ConvBlock(chans[-2], chans[-1], norm)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_deep, c_skip in zip(reversed(chans[1:]), reversed(chans[:-1]), strict=True):
            self.up.append(nn.ConvTranspose2d(c_deep, c_skip, 2, stride=2))
            self.merge.append(ConvBlock(2 * c_skip, c_skip, norm))
        self.head = nn.Conv2d(chans[0], 1, 1)
        init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@MODELS.register(
    "unet",
    knobs=[
        Knob("depth", 2, "pooling levels"),
        Knob("width", 64, "channels of the first level, doubled at each level"),
        Knob("norm", "batch", "normalisation after each conv", choices=NORMS),
    ],
)
def build_unet(in_channels: int, image_size: int, depth: int, width: int, norm: str) -> UNet:
    if depth < 1 or depth > 6:
        raise ConfigError(f"depth={depth} for unet must be between 1 and 6 pooling levels")
    if width < 1:
        raise ConfigError(f"width={width} for unet must be positive")
    if image_size % 2**depth:
        raise ConfigError(
            f"image_size={image_size} is not divisible by 2**depth={2**depth} (unet depth={depth})"
        )
    return UNet(in_channels, depth=depth, width=width, norm=norm)

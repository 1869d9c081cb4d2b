"""The baseline of `benchmarks.train_step`: the course project's models and loop, written plainly.

The seed's notebook is not part of this repository, so this is a reconstruction from its
description (DESIGN.md): the same layers and sizes as flairseg's presets, written the way
the seed wrote them. The U-Net ends in a sigmoid and trains with `nn.BCELoss` on
probabilities; the SETR uses sequence-first `nn.MultiheadAttention` (tokens as (L, B, D))
in hand-written pre-norm encoder layers and four fixed x2 decoder stages (so num_cuts =
image_size / 16); everything runs in fp32, with batches from a `DataLoader` over decoded
numpy arrays, copied to the device batch by batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SeedUNet(nn.Module):
    """Two pooling levels, 64-128-256 channels, transposed convs up, sigmoid out."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.down1 = double_conv(in_channels, 64)
        self.down2 = double_conv(64, 128)
        self.bottom = double_conv(128, 256)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(256, 128, 2, stride=2)
        self.merge2 = double_conv(256, 128)
        self.up1 = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.merge1 = double_conv(128, 64)
        self.out = nn.Conv2d(64, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.merge2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.merge1(torch.cat([self.up1(u2), d1], dim=1))
        return torch.sigmoid(self.out(u1))


class SeedEncoderLayer(nn.Module):
    """Pre-norm: x + MHA(LN(x)), then x + MLP(LN(x)); x is (L, B, D), sequence first."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads)  # batch_first=False: the seed's layout
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.mlp(self.norm2(x))


class SeedSETR(nn.Module):
    """Linear patch embedding, learned positions, 4 encoder layers, 4 x2 decoder stages."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 128,
        num_cuts: int = 8,
        depth: int = 4,
        dim: int = 256,
        heads: int = 8,
        mlp_dim: int = 512,
    ) -> None:
        super().__init__()
        self.n, self.p = num_cuts, image_size // num_cuts
        self.embed = nn.Linear(in_channels * self.p**2, dim)
        self.pos = nn.Parameter(torch.randn(num_cuts**2, 1, dim) * 0.02)
        self.layers = nn.ModuleList(SeedEncoderLayer(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        stages, cin = [], dim
        for _ in range(4):
            cout = max(cin // 2, 16)
            stages += [nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.decoder = nn.Sequential(*stages)
        self.out = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        n, p = self.n, self.p
        patches = x.reshape(b, c, n, p, n, p).permute(2, 4, 0, 1, 3, 5).reshape(n * n, b, c * p * p)
        t = self.embed(patches) + self.pos
        for layer in self.layers:
            t = layer(t)
        grid = self.norm(t).permute(1, 2, 0).reshape(b, -1, n, n)
        return torch.sigmoid(self.out(self.decoder(grid)))


class Slices(TorchDataset):
    """Decoded slices as numpy arrays: image (C, S, S) float32, mask (1, S, S) float32."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[i]), torch.from_numpy(self.masks[i])


def build(model: str, image_size: int) -> nn.Module:
    if model == "unet":
        return SeedUNet(3)
    if model == "setr":
        return SeedSETR(3, image_size, num_cuts=image_size // 16)
    raise ValueError(f"no seed-style model {model!r}")


def loader(images: np.ndarray, masks: np.ndarray, batch_size: int) -> DataLoader:
    return DataLoader(Slices(images, masks), batch_size=batch_size, shuffle=True, drop_last=True)


def train_steps(
    model: nn.Module,
    batches: DataLoader,
    device: torch.device,
    steps: int,
    on_step=None,
) -> None:
    """The seed's loop: fp32, sigmoid + BCELoss, Adam, .item() every batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCELoss()
    model.train()
    done = 0
    while done < steps:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            _ = loss.item()
            done += 1
            if on_step is not None:
                on_step(done)
            if done >= steps:
                return

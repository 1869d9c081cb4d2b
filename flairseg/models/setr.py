"""The seed's SETR: a vision transformer encoder with a progressive-upsampling decoder.

The image is cut into `num_cuts` x `num_cuts` patches; each patch is flattened and
embedded linearly, a learned positional embedding is added, and a pre-norm
transformer encoder of `depth` layers (`heads` attention heads, MLP of `mlp_dim`)
mixes the tokens. The token grid is read back as a (dim, num_cuts, num_cuts) map and
upsampled by log2(image_size / num_cuts) transposed-conv x2 stages to full size, so
any `num_cuts` whose patch side is a power of two gives a full-size mask (the seed's
fixed four stages fit only num_cuts = image_size / 16).

Two knobs choose between our changes and the seed's layers (../shared/SEED.md):
`encoder` "ours" has a GELU MLP, a final LayerNorm and a positional embedding drawn at
std 0.02; "seed" a ReLU MLP, no final norm, std 1. `decoder` "ours" halves the channels
at each stage (dim, dim/2, ..., at least 16) with batch norm; "seed" has 256 channels at
every stage and no normalisation. Both "seed", at num_cuts = image_size / 16 (four
stages), is the seed's SETR, parameter for parameter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flairseg.errors import ConfigError
from flairseg.models.registry import MODELS, init_head
from flairseg.registry import Knob

VARIANTS = ("ours", "seed")  # the choices of `encoder` and `decoder`
SEED_DECODER_CHANNELS = 256  # the seed decoder's channels at every stage


class SETR(nn.Module):
    """Shape: (B, in_channels, S, S) -> logits (B, 1, S, S), S = image_size.

    The presets are declared where `build_setr` registers; it checks the geometry.
    `encoder` and `decoder` are "ours" or "seed" (see the module's docstring).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_cuts: int,
        depth: int,
        dim: int,
        heads: int,
        mlp_dim: int,
        encoder: str,
        decoder: str,
    ) -> None:
        super().__init__()
        self.num_cuts = num_cuts
        self.patch = image_size // num_cuts
        self.embed = nn.Linear(in_channels * self.patch**2, dim)
        seed = encoder == "seed"
        self.pos = nn.Parameter(torch.randn(1, num_cuts**2, dim) * (1.0 if seed else 0.02))
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            mlp_dim,
            dropout=0.0,
            activation="relu" if seed else "gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, depth, norm=None if seed else nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.decoder, cin = _decoder(dim, int(math.log2(self.patch)), seed=decoder == "seed")
        self.head = nn.Conv2d(cin, 1, 1)
        init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        n, p = self.num_cuts, self.patch
        # (B, C, n*p, n*p) -> (B, n*n, C*p*p): one row per patch, row-major over the grid
        tokens = x.reshape(b, c, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c * p * p)
        tokens = self.encoder(self.embed(tokens) + self.pos)
        grid = tokens.transpose(1, 2).reshape(b, -1, n, n)
        return self.head(self.decoder(grid))


def _decoder(dim: int, stages: int, seed: bool) -> tuple[nn.Sequential, int]:
    """`stages` transposed-conv x2 stages from `dim` channels, and the channels they end on.

    Ours: the channels halve at each stage (at least 16), batch norm before each ReLU.
    The seed's: 256 channels at every stage, ReLU only.
    """
    layers: list[nn.Module] = []
    cin = dim
    for _ in range(stages):
        cout = SEED_DECODER_CHANNELS if seed else max(cin // 2, 16)
        layers.append(nn.ConvTranspose2d(cin, cout, 2, stride=2))
        if not seed:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
        cin = cout
    return nn.Sequential(*layers), cin


@MODELS.register(
    "setr",
    knobs=[
        Knob("num_cuts", 8, "patches per side"),
        Knob("depth", 4, "encoder layers"),
        Knob("dim", 256, "embedding size"),
        Knob("heads", 8, "attention heads"),
        Knob("mlp_dim", 512, "transformer MLP size"),
        Knob(
            "encoder",
            "ours",
            "encoder: ours (GELU MLP, final LayerNorm, position init std 0.02) or the seed's "
            "(ReLU MLP, no final norm, std 1)",
            choices=VARIANTS,
        ),
        Knob(
            "decoder",
            "ours",
            "decoder: ours (channels halve per x2 stage, batch norm) or the seed's "
            "(256 channels per stage, no norm)",
            choices=VARIANTS,
        ),
    ],
)
def build_setr(
    in_channels: int,
    image_size: int,
    num_cuts: int,
    depth: int,
    dim: int,
    heads: int,
    mlp_dim: int,
    encoder: str,
    decoder: str,
) -> SETR:
    if num_cuts < 1 or image_size % num_cuts:
        raise ConfigError(f"num_cuts={num_cuts} does not divide image_size={image_size}")
    patch = image_size // num_cuts
    if patch & (patch - 1):
        raise ConfigError(
            f"num_cuts={num_cuts} gives {patch}-px patches at image_size={image_size}; "
            "the patch side must be a power of two"
        )
    for key, value in (("depth", depth), ("dim", dim), ("heads", heads), ("mlp_dim", mlp_dim)):
        if value < 1:
            raise ConfigError(f"{key}={value} for setr must be positive")
    if dim % heads:
        raise ConfigError(f"dim={dim} is not divisible by heads={heads}")
    return SETR(in_channels, image_size, num_cuts, depth, dim, heads, mlp_dim, encoder, decoder)

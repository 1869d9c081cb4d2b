"""K same-shaped SETRs as one model K times wider (flairseg.fused trains with it).

The operations are written out, as HFTA fuses a transformer (Wang et al., MLSys 2021),
each weight stacked anew each call from the K models' parameters (so gradients land in
each model's own): the patch embedding, attention's projections and the MLP are batched
matrix products over a (K, in, out) stack of the K weights (torch.baddbmm, model k's
tokens in row k); LayerNorm normalises each token over its features, then applies each
model's own affine; the positional embeddings are stacked; attention runs once, K folded
into its batch ((K, B, N, D) -> (K·B, heads, N, d)), so one scaled_dot_product_attention
serves all K. The decoder's transposed convolutions, batch norm and ReLU and the 1x1
head are the U-Net's (flairseg.models.unet_fused): grouped over K·C channels, batch
norm's running statistics written back to each model. Both `encoder` and both `decoder`
variants of flairseg.models.setr fuse. Not torch.func.vmap: under bf16 autocast it
returns fp32 from convolutions and linear layers, and SDPA has no batched backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flairseg.models.setr import SETR
from flairseg.models.unet_fused import _block, _conv


def fusable(models: Sequence[nn.Module]) -> bool:
    """Whether `models` can run fused: two or more SETRs of one shape (the same
    parameters' shapes, heads, activation and norms), without dropout."""
    if len(models) < 2 or not all(type(m) is SETR for m in models):
        return False
    shapes = [_shape(m) for m in models]
    return all(s == shapes[0] for s in shapes) and not any(_drops(m) for m in models)


def _shape(model: SETR) -> tuple:
    """What must be the same for the K models to run as one: every parameter's shape,
    and per encoder layer what its parameters do not show."""
    layers = tuple(
        (
            layer.self_attn.num_heads,
            layer.activation,
            layer.norm_first,
            layer.norm1.eps,
            layer.norm2.eps,
            layer.self_attn.batch_first,
        )
        for layer in model.encoder.layers
    )
    final = None if model.encoder.norm is None else model.encoder.norm.eps
    params = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    return model.num_cuts, model.patch, params, layers, final


def _drops(model: SETR) -> bool:
    """Whether any dropout of `model` would draw (the SETR's are all p = 0)."""
    p = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    p += [layer.self_attn.dropout for layer in model.encoder.layers]
    return any(q > 0 for q in p)


def _matmul(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], x: torch.Tensor):
    """Model k's linear layer (weight (out, in), bias (out,)) on row k of x (K, M, in)."""
    weight = torch.stack(list(weights)).transpose(1, 2)  # (K, in, out)
    return torch.baddbmm(torch.stack(list(biases)).unsqueeze(1), x, weight)


def _linear(layers: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    return _matmul([m.weight for m in layers], [m.bias for m in layers], x)


def _layer_norm(layers: Sequence[nn.LayerNorm], x: torch.Tensor) -> torch.Tensor:
    """Each token normalised over its features, then model k's affine on row k."""
    x = F.layer_norm(x, layers[0].normalized_shape, eps=layers[0].eps)
    weight = torch.stack([m.weight for m in layers]).unsqueeze(1)
    bias = torch.stack([m.bias for m in layers]).unsqueeze(1)
    return torch.addcmul(bias, x, weight)


def _attention(layers: Sequence[nn.MultiheadAttention], x: torch.Tensor, b: int):
    """Self-attention of each model on its rows of x (K, B·N, D): the projections
    batched over K, the attention itself once over K·B sequences."""
    k, rows, d = x.shape
    heads = layers[0].num_heads
    n = rows // b
    qkv = _matmul([m.in_proj_weight for m in layers], [m.in_proj_bias for m in layers], x)
    # (K, B·N, 3·D) -> 3 x (K·B, heads, N, d): model k's sequences are rows k·B..(k+1)·B
    qkv = qkv.reshape(k, b, n, 3, heads, d // heads).permute(3, 0, 1, 4, 2, 5)
    q, kk, v = qkv.reshape(3, k * b, heads, n, d // heads).unbind(0)
    out = F.scaled_dot_product_attention(q, kk, v)
    out = out.reshape(k, b, heads, n, d // heads).permute(0, 1, 3, 2, 4).reshape(k, rows, d)
    return _linear([m.out_proj for m in layers], out)


def _encoder_layer(layers: Sequence[nn.TransformerEncoderLayer], x: torch.Tensor, b: int):
    """A pre-norm encoder layer of each model (its dropouts are p = 0: left out)."""
    x = x + _attention([m.self_attn for m in layers], _layer_norm([m.norm1 for m in layers], x), b)
    hidden = layers[0].activation(
        _linear([m.linear1 for m in layers], _layer_norm([m.norm2 for m in layers], x))
    )
    return x + _linear([m.linear2 for m in layers], hidden)


def forward(models: Sequence[SETR], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each model's logits on its own batch (all of one size), in one fused pass."""
    k, first = len(models), models[0]
    b, c, _, _ = xs[0].shape
    n, p = first.num_cuts, first.patch
    # as SETR.forward, per model: one row per patch, row-major over the grid
    x = torch.stack(list(xs)).reshape(k, b, c, n, p, n, p)
    tokens = x.permute(0, 1, 3, 5, 2, 4, 6).reshape(k, b * n * n, c * p * p)
    h = _linear([m.embed for m in models], tokens)
    h = (h.reshape(k, b, n * n, -1) + torch.stack([m.pos for m in models])).reshape(
        k, b * n * n, -1
    )
    for layers in zip(*(m.encoder.layers for m in models), strict=True):
        h = _encoder_layer(layers, h, b)
    if first.encoder.norm is not None:
        h = _layer_norm([m.encoder.norm for m in models], h)
    # (K, B·N, D) -> (B, K·D, n, n): model k's feature map is channels k·D..(k+1)·D
    grid = h.reshape(k, b, n * n, -1).permute(1, 0, 3, 2).reshape(b, -1, n, n)
    x = _block([m.decoder for m in models], grid)
    logits = _conv([m.head for m in models], x)  # (B, K, S, S): channel k is model k's
    return list(logits.unsqueeze(2).unbind(1))

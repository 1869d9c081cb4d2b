"""Model registry: `build_model(name, in_channels, image_size, **params)`.

A model is one module with a builder decorated by `@MODELS.register(name)`. The builder
takes `in_channels`, `image_size` and its own keyword knobs; knobs passed as None keep
the builder's default, so a search that leaves a knob unset gets the preset.
Every model returns logits of shape (B, 1, H, W).
"""

from __future__ import annotations

import inspect

from torch import nn

from flairseg.errors import ConfigError
from flairseg.models import setr, unet  # noqa: F401  (registers the models)
from flairseg.models.registry import MODELS


def model_params(name: str) -> list[str]:
    """The knob names the model `name` accepts (besides in_channels and image_size)."""
    sig = inspect.signature(MODELS.get(name))
    return [p for p in sig.parameters if p not in ("in_channels", "image_size")]


def model_defaults(name: str) -> dict[str, object]:
    """The preset value of each knob of model `name` (what a knob left as None means)."""
    sig = inspect.signature(MODELS.get(name))
    return {k: p.default for k, p in sig.parameters.items() if k in model_params(name)}


def build_model(name: str, in_channels: int, image_size: int, **params: object) -> nn.Module:
    """Build the registered model `name`; unknown knobs fail naming the knob and the model."""
    builder = MODELS.get(name)
    allowed = model_params(name)
    given = {k: v for k, v in params.items() if v is not None}
    for key in given:
        if key not in allowed:
            raise ConfigError(
                f"{key} does not apply to model {name!r} (its knobs: {', '.join(allowed)})"
            )
    return builder(in_channels=in_channels, image_size=image_size, **given)


__all__ = ["MODELS", "build_model", "model_defaults", "model_params"]

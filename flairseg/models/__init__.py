"""Model registry: `build_model(name, in_channels, image_size, **knobs)`.

A model is one module whose builder registers with its knobs, plus one import line below:

    @MODELS.register("unet", knobs=[Knob("depth", 2, "pooling levels"), ...])
    def build_unet(in_channels: int, image_size: int, depth: int, width: int, norm: str) -> UNet:

The builder takes `in_channels`, `image_size` and exactly its declared knobs. A knob passed
as None (or not at all) gets its preset, so a search that leaves a knob unset gets the
preset; a knob of another model fails naming the model's knobs. The knobs of every model
become TrainConfig fields, `flairseg.train` flags and search-file keys of the same name.
Every model returns logits of shape (B, 1, H, W).
"""

from __future__ import annotations

from torch import nn

from flairseg.models.registry import MODELS
from flairseg.registry import Knob

# The order models register in is the order of their knobs in the flat vocabulary
# (TrainConfig.to_dict(), CLI flags, MLflow params): unet's, then setr's new ones. Add below.
# isort: off
from flairseg.models import unet  # noqa: F401  (registers the model)
from flairseg.models import setr  # noqa: F401

# isort: on


def model_params(name: str) -> list[str]:
    """The knob names the model `name` accepts (besides in_channels and image_size)."""
    return [k.name for k in MODELS.knobs(name)]


def model_defaults(name: str) -> dict[str, object]:
    """The preset value of each knob of model `name` (what a knob left as None means)."""
    return {k.name: k.default for k in MODELS.knobs(name)}


def model_keys() -> list[str]:
    """Every registered model's knob names, one per flat key, in registration order."""
    return list(MODELS.union())


def build_model(name: str, in_channels: int, image_size: int, **params: object) -> nn.Module:
    """Build the registered model `name`; unknown knobs fail naming the knob and the model."""
    return MODELS.build(name, {"in_channels": in_channels, "image_size": image_size}, params)


__all__ = ["MODELS", "Knob", "build_model", "model_defaults", "model_keys", "model_params"]

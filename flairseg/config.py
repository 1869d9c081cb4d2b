"""The settings of one training run, in the vocabulary shared by search files, MLflow and CLIs."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from flairseg.errors import ConfigError
from flairseg.losses import LOSSES, check_alpha
from flairseg.models import build_model, model_params

MODEL_KEYS = ("depth", "width", "norm", "num_cuts", "dim", "heads", "mlp_dim")


@dataclass(frozen=True)
class TrainConfig:
    """One run. Model knobs left as None keep the model's preset (unet: the seed's U-Net)."""

    model: str = "unet"  # a name in flairseg.models.MODELS
    loss: str = "combo"  # dice | bce | combo
    alpha: float = 0.5  # combo weight of BCE: alpha*BCE + (1-alpha)*Dice
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 16
    epochs: int = 20
    image_size: int = 128  # slices are resized to image_size x image_size
    channels: int = 3  # 3: pre-contrast, FLAIR, post-contrast; 1: FLAIR only
    seed: int = 0  # weights, batch order and augmentation
    augment: bool = True  # flips, small rotation and scale on train batches
    val_fraction: float = 0.2  # of patients
    test_fraction: float = 0.2  # of patients; 0 keeps no test split
    split_seed: int = 0  # the patient split, apart from `seed` so a search keeps one split
    # model knobs (None: the model's preset)
    depth: int | None = None  # unet: pooling levels; setr: encoder layers
    width: int | None = None  # unet: channels of the first level
    norm: str | None = None  # unet: none | batch | instance | group
    num_cuts: int | None = None  # setr: patches per side
    dim: int | None = None  # setr: embedding size
    heads: int | None = None  # setr: attention heads
    mlp_dim: int | None = None  # setr: transformer MLP size

    def __post_init__(self) -> None:
        for name, (want, optional) in field_types().items():
            value = getattr(self, name)
            if value is None and optional:
                continue
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
            elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"{name}={value!r} must be {want.__name__}")
        _check_range("lr", self.lr, low=0.0, low_open=True)
        _check_range("batch_size", self.batch_size, low=1)
        _check_range("epochs", self.epochs, low=1)
        _check_range("image_size", self.image_size, low=8)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels} must be 3 (all) or 1 (FLAIR only)")
        check_alpha(self.alpha)
        LOSSES.get(self.loss)
        for key in ("val_fraction", "test_fraction"):
            _check_range(key, getattr(self, key), low=0.0, high=1.0, high_open=True)
        if self.val_fraction <= 0:
            raise ConfigError(
                f"val_fraction={self.val_fraction} must be above 0: val drives the search"
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"val_fraction={self.val_fraction} + test_fraction={self.test_fraction} leave no train patients"
            )
        allowed = model_params(self.model)
        for key in MODEL_KEYS:
            if getattr(self, key) is not None and key not in allowed:
                raise ConfigError(
                    f"{key} does not apply to model {self.model!r} (its knobs: {', '.join(allowed)})"
                )
        with torch.device("meta"):  # geometry checks fail here, not mid-run; meta allocates nothing
            self.build_model()

    def model_kwargs(self) -> dict[str, Any]:
        """The model knobs that are set, for `build_model`."""
        return {k: getattr(self, k) for k in MODEL_KEYS if getattr(self, k) is not None}

    def build_model(self):
        return build_model(self.model, self.channels, self.image_size, **self.model_kwargs())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a search file, a checkpoint); an unknown key fails naming it."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}"
                )
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _base_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def field_types() -> dict[str, tuple[type, bool]]:
    """{key: (base type, optional)} for each TrainConfig field, for building CLI flags."""
    return {name: (_base_type(t), _optional(t)) for name, t in _hints().items()}


def _check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{key}={value} must be {'above' if low_open else 'at least'} {low}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"{key}={value} must be {'below' if high_open else 'at most'} {high}")

"""The settings of one training run, in the vocabulary shared by search files, MLflow and CLIs.

`TrainConfig` holds the settings written below, and one field per knob that a registered
loss or model declares (flairseg.losses, flairseg.models): the flat keys of that vocabulary.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch

from flairseg.errors import ConfigError
from flairseg.losses import LOSSES, build_loss
from flairseg.models import MODELS, build_model, model_keys
from flairseg.registry import Knob, KnobRegistry

# A config whose model holds more weights (parameters and buffers, as built: float32) is
# refused, before anything is allocated: the preset U-Net holds 7 MiB, so this only stops
# a typo (width=16384: 454 GiB) or a crafted checkpoint from exhausting memory.
MAX_WEIGHT_BYTES = 2 * 2**30
# kaggle_3m slices are 256 px; memory grows with the square of image_size
MAX_IMAGE_SIZE = 1024


class TrainConfig:
    """One run: the settings written here, and one field per knob of a registered loss or model.

    A frozen dataclass (made so by `_define_fields` below). Loss knobs (combo's `alpha`) sit
    right after `loss` and hold their preset; model knobs come last, and None keeps the
    model's preset (unet: the seed's U-Net). Each is declared where its builder registers.
    """

    model: str = "unet"  # a name in flairseg.models.MODELS
    loss: str = "combo"  # a name in flairseg.losses.LOSSES; its knobs follow
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
    # model knobs follow (None: the model's preset)

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
        _check_range("image_size", self.image_size, low=8, high=MAX_IMAGE_SIZE)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels} must be 3 (all) or 1 (FLAIR only)")
        for name in LOSSES.names():  # every loss's knobs, whichever loss runs, as alpha always was
            LOSSES.build(name, {}, self._knob_values(LOSSES, name))
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
        # a knob of another model fails here; geometry checks fail here, not mid-run (meta
        # allocates nothing), and so does a model too big to build (see MAX_WEIGHT_BYTES)
        with torch.device("meta"):
            try:
                model = self.build_model()
            except (RuntimeError, TypeError) as err:  # torch: a size past int64 overflows
                raise ConfigError(f"{self.model_text()}: {str(err).splitlines()[0]}") from None
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        if weights > MAX_WEIGHT_BYTES:
            raise ConfigError(
                f"{self.model_text()} would hold {weights / 2**30:.1f} GiB of weights; "
                f"the cap is {MAX_WEIGHT_BYTES / 2**30:.0f} GiB"
            )

    def model_text(self) -> str:
        """The model and the knobs set, for messages: `model unet (width=8)`."""
        knobs = ", ".join(f"{k}={v}" for k, v in self.model_kwargs().items())
        return f"model {self.model}" + (f" ({knobs})" if knobs else "")

    def model_kwargs(self) -> dict[str, Any]:
        """The model knobs that are set, for `build_model` (which refuses another model's)."""
        return {k: getattr(self, k) for k in model_keys() if getattr(self, k) is not None}

    def loss_kwargs(self) -> dict[str, Any]:
        """The knobs of this config's loss, for `build_loss`."""
        return self._knob_values(LOSSES, self.loss)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.model, self.channels, self.image_size, **self.model_kwargs())

    def build_loss(self) -> torch.nn.Module:
        return build_loss(self.loss, **self.loss_kwargs())

    def _knob_values(self, registry: KnobRegistry, name: str) -> dict[str, Any]:
        return {k.name: getattr(self, k.name) for k in registry.knobs(name)}

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


# Why the knob fields are generated: a model or a loss owns its knobs (declared where its
# builder registers), so adding one is one file, and this class, the train flags and the
# search keys follow. Why regrown in place on every registration: modules hold this class
# by reference (`from flairseg.config import TrainConfig`), so a builder registered after
# this import (a notebook, a test) must grow the same class, not a new one. The flat order
# is the vocabulary's since the first release (checkpoints, MLflow params): loss knobs
# right after `loss`, model knobs last.
_WRITTEN = dict(vars(TrainConfig))  # the class as written, before any field is generated


def _define_fields(cls: type) -> None:
    """(Re)make `cls` a frozen dataclass of its written fields plus one per registered knob."""
    written = _WRITTEN["__annotations__"]
    loss_knobs, model_knobs = LOSSES.union(), MODELS.union()
    keys = [*loss_knobs, *model_knobs]
    taken = [k for k in keys if k in written or keys.count(k) > 1]
    if taken:  # refused before anything changes; the registry then drops the new builder
        raise RuntimeError(
            f"knob {taken[0]!r} is already a TrainConfig setting or a knob of the other registry"
        )
    for name in set(vars(cls)) - set(_WRITTEN):
        delattr(cls, name)  # what the last pass generated: __init__, __eq__, knob defaults ...
    annotations: dict[str, Any] = {}
    for name, hint in written.items():
        annotations[name] = hint
        if name == "loss":
            for key, owners in loss_knobs.items():
                annotations[key] = owners[0][1].type
                setattr(cls, key, _knob_field(owners, default=owners[0][1].default))
    for key, owners in model_knobs.items():
        annotations[key] = owners[0][1].type | None
        setattr(cls, key, _knob_field(owners, default=None))
    cls.__annotations__ = annotations
    dataclasses.dataclass(frozen=True)(cls)


def _knob_field(owners: list[tuple[str, Knob]], default: Any) -> Any:
    """A field whose metadata holds the help of every builder that declares the knob."""
    text = "; ".join(f"{owner}: {knob.describe()}" for owner, knob in owners)
    return dataclasses.field(default=default, metadata={"help": text})


_define_fields(TrainConfig)
MODELS.subscribe(lambda: _define_fields(TrainConfig))
LOSSES.subscribe(lambda: _define_fields(TrainConfig))


def __getattr__(name: str) -> Any:
    if name == "MODEL_KEYS":  # the old constant, now read from the registry when asked
        return tuple(model_keys())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def knob_help() -> dict[str, str]:
    """{key: one-line help} for each knob field, e.g. depth: 'unet: pooling levels; setr: ...'."""
    return {f.name: f.metadata["help"] for f in fields(TrainConfig) if "help" in f.metadata}


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

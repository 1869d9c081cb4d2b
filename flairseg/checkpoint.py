"""Checkpoints on disk: reading one safely, and the model (or fold ensemble) it holds.

A checkpoint is a dict saved with torch.save: `format`, `config`, `epoch`, `history`,
`split`, `fingerprint`, and either `model` (one run, flairseg.engine.TrainState) or
`folds`, one state per fold model (a cross-validated run, flairseg.cv.FoldsState).

A damaged or crafted file fails with a ConfigError naming what is wrong, never a
traceback, and before any model is allocated: the config must be valid (which caps the
model's size, flairseg.config.MAX_WEIGHT_BYTES) and every stored weight must have the
name and shape of that config's model, so building it allocates no more than the file
already held.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flairseg.config import TrainConfig
from flairseg.ensemble import Ensemble
from flairseg.errors import ConfigError, FlairsegError
from flairseg.files import atomic_write

CHECKPOINT_FORMAT = 1


def write_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save a checkpoint dict atomically (a reader never sees half a file)."""
    with atomic_write(path) as f:
        torch.save(payload, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (no code is unpickled)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the checkpoint ({err.strerror or err})") from None
    except Exception as err:  # torch raises many kinds for a foreign or damaged file
        raise ConfigError(f"{path}: not a flairseg checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a flairseg checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[TrainConfig, nn.Module]:
    """The config and model of a checkpoint; a cross-validated one (`folds`: one state per
    fold, see flairseg.cv) gives the Ensemble of its fold models. A config or weights that
    cannot make that model fail with a ConfigError before the model is built."""
    config = _config(ckpt)
    if "folds" in ckpt:
        folds = ckpt["folds"]
        if not isinstance(folds, list) or not folds:
            raise ConfigError("checkpoint's folds are not a list of fold states")
        states = [_weights(fold, f"fold {i + 1}") for i, fold in enumerate(folds)]
    else:
        states = [_weights(ckpt, "checkpoint")]
    with torch.device("meta"):  # names and shapes only: allocates nothing
        wanted = config.build_model().state_dict()
    for where, weights in states:
        _check_fits(config, wanted, weights, where)
    models = [_built(config, weights, where) for where, weights in states]
    model = Ensemble(models) if "folds" in ckpt else models[0]
    model.eval()
    return config, model


def _config(ckpt: dict[str, Any]) -> TrainConfig:
    values = ckpt.get("config")
    if values is None:
        raise ConfigError("checkpoint holds no config")
    if not isinstance(values, dict):
        raise ConfigError(f"checkpoint's config is a {type(values).__name__}, not settings")
    try:
        return TrainConfig.from_dict(values)
    except FlairsegError as err:
        raise ConfigError(f"checkpoint's config: {err}") from None
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"checkpoint's config: {type(err).__name__}: {err}") from None


def _weights(state: Any, where: str) -> tuple[str, dict[str, Any]]:
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ConfigError(f"{where} holds no model weights")
    return where, weights


def _check_fits(
    config: TrainConfig, wanted: dict[str, torch.Tensor], weights: dict[str, Any], where: str
) -> None:
    """Every weight of the config's model is there, with its shape, and nothing else."""
    model = f"its config's {config.model_text()}"
    missing = [k for k in wanted if k not in weights]
    extra = [k for k in weights if k not in wanted]
    if missing or extra:
        first = f"no {missing[0]!r}" if missing else f"an unknown {extra[0]!r}"
        raise ConfigError(
            f"{where}: the weights do not fit {model}: {first} "
            f"({len(missing)} missing, {len(extra)} unknown)"
        )
    for key, want in wanted.items():
        got = weights[key]
        if not isinstance(got, torch.Tensor):
            raise ConfigError(f"{where}: weight {key!r} is a {type(got).__name__}, not a tensor")
        if got.shape != want.shape:
            raise ConfigError(
                f"{where}: the weights do not fit {model}: {key!r} is {list(got.shape)}, "
                f"the model's is {list(want.shape)}"
            )


def _built(config: TrainConfig, weights: dict[str, Any], where: str) -> nn.Module:
    model = config.build_model()
    try:
        model.load_state_dict(weights)
    except Exception as err:  # checked above; what is left: odd dtypes, meta or sparse tensors
        raise ConfigError(
            f"{where}: weights cannot be loaded ({str(err).splitlines()[0]})"
        ) from None
    return model

"""Checkpoints on disk: reading one safely, and the model (or fold ensemble) it holds.

A checkpoint is a dict saved with torch.save: `format`, `config`, `epoch`, `history`,
`split`, `fingerprint`, and either `model` (one run, flairseg.engine.TrainState) or
`folds`, one state per fold model (a cross-validated run, flairseg.cv.FoldsState).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flairseg.config import TrainConfig
from flairseg.ensemble import Ensemble
from flairseg.errors import ConfigError
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
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a foreign or damaged file
        raise ConfigError(f"{path}: not a flairseg checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a flairseg checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[TrainConfig, nn.Module]:
    """The config and model of a checkpoint; a cross-validated one (`folds`: one state per
    fold, see flairseg.cv) gives the Ensemble of its fold models."""
    config = TrainConfig.from_dict(ckpt["config"])
    if "folds" in ckpt:
        model: nn.Module = Ensemble([_built(config, fold["model"]) for fold in ckpt["folds"]])
    else:
        model = _built(config, ckpt["model"])
    model.eval()
    return config, model


def _built(config: TrainConfig, weights: dict[str, Any]) -> nn.Module:
    model = config.build_model()
    model.load_state_dict(weights)
    return model

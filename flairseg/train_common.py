"""What `flairseg.train` and `flairseg.train_cv` both use: a config's one-line description,
the speed flags read back, and the atomic `--json` write.

Here so that flairseg.train_cv needs nothing from flairseg.train: the CLI dispatches one
way only (flairseg.train imports flairseg.train_cv, never the reverse).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from flairseg.config import TrainConfig
from flairseg.engine import Speed
from flairseg.files import atomic_write
from flairseg.speed import fuse_mode


def speed_from_args(args: argparse.Namespace) -> Speed:
    return Speed(fast=not args.no_fast_path, compile=args.compile, fuse=fuse_mode(args.fuse))


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write JSON atomically: the file is either absent or complete."""
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(config: TrainConfig) -> str:
    loss_knobs = ", ".join(f"{k}={_short(v)}" for k, v in config.loss_kwargs().items())
    loss = f"{config.loss}({loss_knobs})" if loss_knobs else config.loss
    knobs = " ".join(f"{k}={v}" for k, v in config.model_kwargs().items())
    return f"{config.model}{' ' + knobs if knobs else ''} / {loss}, {config.image_size} px"

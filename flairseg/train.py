"""Train one model: `python -m flairseg.train [--data DIR] [--model unet --loss combo ...]`.

Every setting of `TrainConfig` is a flag (`image_size` is `--image-size`). Without
`--data` the run uses the synthetic default, generated once into the cache folder.
A progress line is printed per epoch; the best configuration is not chosen here:
the last epoch's model is scored on val and, once, on test. `--json FILE` writes
those scores with the DESIGN.md keys and the patient split.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flairseg.config import TrainConfig, field_types, knob_help
from flairseg.data import cache_dir
from flairseg.dataset import Dataset, load_dataset
from flairseg.engine import DivergedError, EpochReport, evaluate, pick_device, train
from flairseg.errors import ArgumentParser, ConfigError, DataError, run_cli
from flairseg.phantom import PhantomSpec, write_phantom
from flairseg.speed import FUSE_HELP

# also imported from here by study/ and benchmarks/ (write_json); train_cv takes them from
# flairseg.train_common, so the import runs one way: train -> train_cv, never back
from flairseg.train_common import describe, speed_from_args, write_json


def default_data(spec: PhantomSpec = PhantomSpec()) -> Path:
    """The embedded synthetic default: generated on first use into the cache folder."""
    folder = cache_dir() / "data" / spec.name()
    if not folder.exists():
        print(f"generating the synthetic default data set into {folder} (once)", file=sys.stderr)
        try:
            write_phantom(folder, spec)
        except DataError:
            if not folder.exists():  # not a concurrent writer that finished first
                raise
    return folder


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, `_` spelt `-`; defaults None so unset flags keep the config's.

    A knob's flag (`--alpha`, `--depth`, ...) shows the help its loss or model declared.
    """
    defaults = TrainConfig()
    helps = knob_help()
    for name, (kind, optional) in field_types().items():
        flag = "--" + name.replace("_", "-")
        shown = "model preset" if optional else getattr(defaults, name)
        text = f"{helps[name]} (default: {shown})" if name in helps else f"(default: {shown})"
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=text)


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """--no-fast-path, --compile, --fuse: how a run executes (flairseg.engine.Speed)."""
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="plain fp32 in the default memory layout (the reference the fast path is checked against)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (costs compile time first)"
    )
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, help=FUSE_HELP)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {name: getattr(args, name) for name in field_types() if getattr(args, name) is not None}
    return TrainConfig.from_dict(given)


def print_epoch(report: EpochReport, total: int, started: float) -> None:
    m = report.metrics
    print(
        f"epoch {m['epoch']:>3}/{total}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"val_dice {m['val_dice']:.3f}  val_iou {m['val_iou']:.3f}  val_volume_dice {m['val_volume_dice']:.3f}  "
        f"[{time.perf_counter() - started:.1f} s]",
        flush=True,
    )


def summarize(config: TrainConfig, scores: dict[str, Any], seconds: float) -> str:
    """The run's last line: what was trained, how long, and its val (and test) scores."""
    summary = (
        f"{describe(config)}, {scores['epoch']} epochs in {seconds:.1f} s: "
        f"val dice {scores['val_dice']:.3f} iou {scores['val_iou']:.3f} volume dice {scores['val_volume_dice']:.3f}"
    )
    if "test_dice" in scores:
        summary += f" | test dice {scores['test_dice']:.3f} iou {scores['test_iou']:.3f}"
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m flairseg.train`, read when called: a model registered later has its."""
    parser = ArgumentParser(prog="python -m flairseg.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="kaggle_3m folder (default: the synthetic phantom set)")
    add_config_flags(parser)
    parser.add_argument("--json", metavar="FILE", help="write the final scores and split here")
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="save the final model here (for flairseg.predict)"
    )
    parser.add_argument(
        "--resume", metavar="FILE", help="continue from a checkpoint of the same config"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="patient K-fold cross-validation of the non-test patients (val_fraction unused): "
        "K fold models, scored by their mean; test by their ensemble and one by one",
    )
    add_speed_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if args.folds is not None:
        from flairseg.train_cv import check_flag

        check_flag(args.folds)
    for flag in ("json", "checkpoint"):
        target = getattr(args, flag)
        if target and Path(target).is_dir():
            raise ConfigError(f"--{flag} {target}: is a folder; give a file name")
    data_dir = Path(args.data) if args.data else default_data()
    data = load_dataset(data_dir, config)
    device = pick_device(args.device)
    if args.folds is not None:
        from flairseg.train_cv import run_folds

        return run_folds(args, config, data, data_dir, device)  # flairseg.train_cv
    return run_single(args, config, data, data_dir, device)


def run_single(
    args: argparse.Namespace,
    config: TrainConfig,
    data: Dataset,
    data_dir: Path,
    device: torch.device,
) -> int:
    """Train on the single split, score test once, save; the exit status (1: diverged)."""
    print(
        f"training {describe(config)} for {config.epochs} epochs on {device}: {data_dir} "
        f"({len(data.train)}/{len(data.val)}/{len(data.test) if data.test else 0} slices, "
        f"{len(data.split.train)}/{len(data.split.val)}/{len(data.split.test)} patients train/val/test)",
        flush=True,
    )
    started = time.perf_counter()
    try:
        result = train(
            config,
            data,
            on_epoch=lambda report: print_epoch(report, config.epochs, started),
            resume=args.resume,
            device=device,
            speed=speed_from_args(args),
        )
    except DivergedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    scores: dict[str, Any] = dict(result.metrics)
    if data.test is not None:
        scores.update(
            evaluate(
                result.model,
                data.test,
                config.build_loss(),
                "test",
                device,
                amp=not args.no_fast_path,
            )
        )
    if args.checkpoint:
        result.state.save(args.checkpoint)
    if args.json:
        write_json(
            args.json,
            {
                **scores,
                "split": data.split.to_dict(),
                "config": config.to_dict(),
                "data": str(data_dir),
                "fingerprint": data.fingerprint,
                "seconds": round(result.seconds, 2),
            },
        )
    print(summarize(config, scores, result.seconds))
    return 0


if __name__ == "__main__":
    run_cli(main)

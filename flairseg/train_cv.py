"""`python -m flairseg.train --folds K`: the same config cross-validated on K patient folds.

The test patients are held out as a single-split run holds them out; the others are
dealt into K folds (flairseg.folds). Each epoch prints the fold mean and spread; at the
end, one line per fold (its val patients and scores, its model on test) and a summary:
val as mean and standard deviation over the folds, test for the ensemble of the K
models (mean probability) and for the models one by one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flairseg.config import TrainConfig
from flairseg.cv import FoldsReport, score_folds, train_folds
from flairseg.cvkeys import fold_key, single_key, std_key
from flairseg.dataset import Dataset
from flairseg.engine import DivergedError
from flairseg.folds import check_folds, make_folds
from flairseg.train_common import describe, speed_from_args, write_json


def check_flag(folds: int) -> None:
    """K < 2 fails before any data is read (K above the patients fails in make_folds)."""
    if folds < 2:
        check_folds(folds, patients=folds)


def _spread(scores: dict[str, Any], key: str) -> str:
    return f"{scores[key]:.3f} ± {scores[std_key(key)]:.3f}"


def print_epoch(report: FoldsReport, total: int, started: float) -> None:
    m = report.metrics
    print(
        f"epoch {int(m['epoch']):>3}/{total}  train_loss {m['train_loss']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  val_dice {_spread(m, 'val_dice')}  "
        f"val_iou {_spread(m, 'val_iou')}  val_volume_dice {_spread(m, 'val_volume_dice')}  "
        f"[{time.perf_counter() - started:.1f} s]  (mean ± sd of {len(report.folds)} folds)",
        flush=True,
    )


def fold_lines(scores: dict[str, Any], folds: list[Dataset]) -> list[str]:
    """`fold 2 (val: A, B): val dice .. iou .. volume dice .. | its model on test: iou ..`."""
    lines = []
    for k, data in enumerate(folds, start=1):
        line = (
            f"fold {k} (val: {', '.join(data.split.val)}): "
            f"val dice {scores[fold_key(k, 'val_dice')]:.3f} "
            f"iou {scores[fold_key(k, 'val_iou')]:.3f} "
            f"volume dice {scores[fold_key(k, 'val_volume_dice')]:.3f}"
        )
        if fold_key(k, "test_iou") in scores:
            line += f" | its model on test: iou {scores[fold_key(k, 'test_iou')]:.3f}"
        lines.append(line)
    return lines


def summary_line(described: str, k: int, scores: dict[str, Any], seconds: float) -> str:
    line = (
        f"{described}, {k} folds x {int(scores['epoch'])} epochs in {seconds:.1f} s: "
        f"val (mean ± sd over folds) dice {_spread(scores, 'val_dice')} "
        f"iou {_spread(scores, 'val_iou')} volume dice {_spread(scores, 'val_volume_dice')}"
    )
    if "test_iou" in scores:
        line += (
            f" | test, ensemble of {k}: dice {scores['test_dice']:.3f} iou {scores['test_iou']:.3f} "
            f"volume dice {scores['test_volume_dice']:.3f}; one model: iou "
            f"{scores[single_key('test_iou')]:.3f} ± {scores[std_key(single_key('test_iou'))]:.3f}"
        )
    return line


def run_folds(
    args: argparse.Namespace,
    config: TrainConfig,
    data: Dataset,
    data_dir: Path,
    device: torch.device,
) -> int:
    """Train, score and save the K fold models; the exit status (1 when one diverged)."""
    plan, folds = make_folds(data, args.folds, config.split_seed)
    sizes = sorted({len(v) for v in plan.val})
    print(
        f"training {describe(config)} for {config.epochs} epochs on {device}, {len(plan)}-fold "
        f"cross-validation: {data_dir} ({sum(len(v) for v in plan.val)} patients in "
        f"{len(plan)} folds of {' or '.join(map(str, sizes))}, {len(plan.test)} test patients)",
        flush=True,
    )
    speed = speed_from_args(args)
    started = time.perf_counter()
    try:
        result = train_folds(
            config,
            plan,
            folds,
            on_epoch=lambda report: print_epoch(report, config.epochs, started),
            resume=args.resume,
            device=device,
            speed=speed,
        )
    except DivergedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    scores: dict[str, Any] = dict(result.metrics)
    if data.test is not None:
        models = [state.model for state in result.state.folds]
        tested = score_folds(models, folds, config.build_loss(), device, speed)
        scores.update({k: v for k, v in tested.items() if "test_" in k})
    print(f"fold models trained {'fused' if result.state.fused else 'one by one'}")
    for line in fold_lines(scores, folds):
        print(line)
    if args.checkpoint:
        result.state.save(args.checkpoint)
    if args.json:
        write_json(args.json, payload(scores, folds, config, data_dir, data, result.seconds))
    print(summary_line(describe(config), len(plan), scores, result.seconds))
    return 0


def payload(
    scores: dict[str, Any],
    folds: list[Dataset],
    config: TrainConfig,
    data_dir: Path,
    data: Dataset,
    seconds: float,
) -> dict[str, Any]:
    """--json: the fold means under the usual keys, spreads, the ensemble's test scores,
    and per fold its patients and scores (val, and its model alone on test)."""
    per_fold = []
    for k, fold in enumerate(folds, start=1):
        prefix = fold_key(k, "")
        own = {key[len(prefix) :]: v for key, v in scores.items() if key.startswith(prefix)}
        per_fold.append(
            {
                "fold": k,
                "val_patients": list(fold.split.val),
                "train_patients": list(fold.split.train),
                **own,
            }
        )
    flat = {k: v for k, v in scores.items() if not k.startswith("fold")}
    return {
        **flat,
        "folds": per_fold,
        "split": {"folds": [list(f.split.val) for f in folds], "test": list(data.split.test)},
        "config": config.to_dict(),
        "data": str(data_dir),
        "fingerprint": data.fingerprint,
        "seconds": round(seconds, 2),
    }

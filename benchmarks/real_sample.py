"""How good is `flairseg.train` on real MRI? Ours against a plain hand-written loop, on the
same patient folds, side by side.

    python -m benchmarks.real_sample --data ../shared/data/lgg-32/kaggle_3m [--folds 4] [--sizes 64]

The test patients are held out (split seed 0, test_fraction 0.2; nobody scores them
here) and the other patients dealt into K folds exactly as `flairseg.train --folds K`
deals them (flairseg.folds). For each fold, both sides train on the other folds and
score the fold's patients, with the same budget: a U-Net of base width 16 with batch
norm, Combo loss alpha 0.5, Adam lr 1e-3, batch 16, flips, 30 epochs. flairseg runs
its K fold models in lockstep (`flairseg.cv.train_folds`, what `--folds` runs). The
plain loop is what a user writes in a notebook: PIL to read, a DataLoader, its own
U-Net and loss, random flips; it shares nothing with flairseg but the lists of patient
names. The score is the mean per-patient volume Dice on the fold's patients after the
last epoch; printed per fold, then the mean and standard deviation over the folds.
`--json FILE` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flairseg.config import TrainConfig
from flairseg.cv import train_folds
from flairseg.cvkeys import fold_key
from flairseg.dataset import load_dataset, split_patients
from flairseg.folds import Folds, assign_folds, make_folds

EPOCHS, WIDTH, LR, BATCH, ALPHA = 30, 16, 1e-3, 16, 0.5


# ---- the plain loop -------------------------------------------------------------------------


def plain_load(
    root: Path, names: list[str], size: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    xs, ys, owner = [], [], []
    for i, name in enumerate(names):
        files = sorted(
            (root / name).glob(f"{name}_*[0-9].tif"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
        )
        vol = np.stack(
            [
                np.asarray(Image.open(f).resize((size, size), Image.BILINEAR), np.float32)
                for f in files
            ]
        )
        vol = (vol - vol.mean(axis=(0, 1, 2))) / vol.std(axis=(0, 1, 2))
        masks = [
            np.asarray(
                Image.open(f.with_name(f.stem + "_mask.tif")).resize((size, size), Image.NEAREST)
            )
            > 0
            for f in files
        ]
        xs.append(torch.from_numpy(vol).permute(0, 3, 1, 2))
        ys.append(torch.from_numpy(np.stack(masks)).float()[:, None])
        owner += [i] * len(files)
    return torch.cat(xs), torch.cat(ys), owner


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class PlainUNet(nn.Module):
    def __init__(self, w: int = WIDTH) -> None:
        super().__init__()
        self.d1, self.d2, self.b = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.u2, self.m2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
        self.u1, self.m1 = nn.ConvTranspose2d(2 * w, w, 2, 2), block(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        b = self.d2(F.max_pool2d(a, 2))
        c = self.b(F.max_pool2d(b, 2))
        b = self.m2(torch.cat([self.u2(c), b], 1))
        return self.out(self.m1(torch.cat([self.u1(b), a], 1)))


def plain_combo(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    return ALPHA * F.binary_cross_entropy_with_logits(logits, y) + (1 - ALPHA) * dice


def plain_run(
    root: Path, train_names: list[str], val_names: list[str], size: int, seed: int
) -> dict:
    torch.manual_seed(seed)
    x, y, _ = plain_load(root, train_names, size)
    vx, vy, owner = plain_load(root, val_names, size)
    model = PlainUNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        for xb, yb in loader:
            if torch.rand(1) < 0.5:
                xb, yb = xb.flip(3), yb.flip(3)
            if torch.rand(1) < 0.5:
                xb, yb = xb.flip(2), yb.flip(2)
            loss = plain_combo(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = (
            torch.cat([torch.sigmoid(model(vx[i : i + 32])) for i in range(0, len(vx), 32)]) >= 0.5
        )
    owner_t = torch.tensor(owner)
    dices = []
    for i in range(len(val_names)):
        p, t = pred[owner_t == i], vy[owner_t == i] > 0.5
        tp, fp, fn = (p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()
        dices.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"seconds": seconds, "val_volume_dice": float(np.mean(dices))}


# ---- ours -----------------------------------------------------------------------------------


def ours_folds(root: Path, size: int, folds: int, seed: int) -> tuple[Folds, list[dict], float]:
    """flairseg's K fold models, trained in lockstep: its folds, each fold's val scores,
    the seconds."""
    config = TrainConfig(
        model="unet",
        width=WIDTH,
        norm="batch",
        loss="combo",
        alpha=ALPHA,
        lr=LR,
        batch_size=BATCH,
        epochs=EPOCHS,
        image_size=size,
        seed=seed,
        val_fraction=0.2,
        test_fraction=0.2,
        split_seed=0,
    )
    plan, datasets = make_folds(load_dataset(root, config), folds, config.split_seed)
    result = train_folds(config, plan, datasets, device="cpu")
    m = result.metrics
    per_fold = [
        {key: m[fold_key(k, key)] for key in ("val_volume_dice", "val_dice", "val_iou")}
        for k in range(1, folds + 1)
    ]
    return plan, per_fold, result.seconds


def fold_plan(root: Path, folds: int) -> Folds:
    """The folds `flairseg.train --folds K` uses at split seed 0 (val and test fractions 0.2)."""
    patients = sorted(p.name for p in root.iterdir() if p.is_dir())
    split = split_patients(patients, 0.2, 0.2, seed=0)
    dealt = assign_folds(split.train + split.val, folds, seed=0)
    return Folds(val=tuple(dealt), test=split.test)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    global EPOCHS  # the budget both sides read; --epochs sets it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("FLAIRSEG_LGG_32") or os.environ.get("FLAIRSEG_LGG_SAMPLE"),
        help="a kaggle_3m folder (lgg-32 for the README's figures)",
    )
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30, help="both sides' budget")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    EPOCHS = args.epochs
    if not args.data:
        parser.error("give --data or set FLAIRSEG_LGG_32")
    root = Path(args.data)
    plan = fold_plan(root, args.folds)
    print(
        f"{sum(len(v) for v in plan.val)} patients in {args.folds} folds, {len(plan.test)} held "
        f"out for test; {EPOCHS} epochs, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    runs: dict[str, dict] = {}
    for size in args.sizes:
        plain = []
        for k in range(args.folds):
            split = plan.split(k)
            plain.append(plain_run(root, list(split.train), list(split.val), size, args.seed))
            print(
                f"plain loop {size} px, fold {k + 1}: {plain[-1]['val_volume_dice']:.3f}",
                flush=True,
            )
        used, ours, seconds = ours_folds(root, size, args.folds, args.seed)
        assert used == plan, "the plain loop and flairseg must score the same folds"
        print(
            f"flairseg {size} px, folds: {[round(f['val_volume_dice'], 3) for f in ours]}",
            flush=True,
        )
        runs[f"plain loop {size} px"] = {
            "per_fold": [r["val_volume_dice"] for r in plain],
            "seconds_per_fold": statistics.mean(r["seconds"] for r in plain),
        }
        runs[f"flairseg {size} px"] = {
            "per_fold": [r["val_volume_dice"] for r in ours],
            "per_fold_iou": [r["val_iou"] for r in ours],
            "seconds_per_fold": seconds / args.folds,
        }
    base = statistics.mean(next(iter(runs.values()))["per_fold"])
    print(
        f"\n{'run':<18} {'val volume Dice, mean ± sd over folds':>38} {'per fold':>28} {'s/fold':>7} {'vs plain':>9}"
    )
    for name, r in runs.items():
        d = r["per_fold"]
        r["mean"], r["sd"] = statistics.mean(d), statistics.stdev(d)
        print(
            f"{name:<18} {spread(d):>38} {' '.join(f'{v:.3f}' for v in d):>28} "
            f"{r['seconds_per_fold']:>7.1f} {r['mean'] / base:>8.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"folds": plan.to_dict(), "epochs": EPOCHS, "runs": runs}, indent=2)
        )


if __name__ == "__main__":
    main()

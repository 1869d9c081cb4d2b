"""How good is `flairseg.train` on real MRI? Ours against a plain hand-written loop, side by side.

    FLAIRSEG_LGG_SAMPLE=../shared/data/lgg-sample/kaggle_3m python -m benchmarks.real_sample [--seeds 3]

Both sides train on the same 6 patients and score the same 2 (split seed 0,
val_fraction 0.25, no test), with the same budget: a U-Net of base width 16 with
batch norm, Combo loss alpha 0.5, Adam lr 1e-3, batch 16, flips, 30 epochs. The
plain loop is what a user writes in a notebook: PIL to read, a DataLoader, its own
U-Net and loss, random flips; it shares nothing with flairseg but the list of
patient names. The score is the mean per-patient volume Dice on val after the last
epoch, averaged over seeds. `--json FILE` keeps the figures.
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
from flairseg.dataset import load_dataset, split_patients
from flairseg.engine import train

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


def ours_run(root: Path, size: int, seed: int) -> dict:
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
        val_fraction=0.25,
        test_fraction=0.0,
        split_seed=0,
    )
    result = train(config, load_dataset(root, config), device="cpu")
    return {
        "seconds": result.seconds,
        "val_volume_dice": result.metrics["val_volume_dice"],
        "val_dice": result.metrics["val_dice"],
        "val_iou": result.metrics["val_iou"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("FLAIRSEG_LGG_SAMPLE"),
        help="kaggle_3m folder of the LGG sample",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set FLAIRSEG_LGG_SAMPLE")
    root = Path(args.data)
    patients = sorted(p.name for p in root.iterdir() if p.is_dir())
    split = split_patients(patients, 0.25, 0.0, seed=0)
    print(
        f"train {len(split.train)} patients, val {list(split.val)}; {EPOCHS} epochs, torch threads {torch.get_num_threads()}"
    )
    rows: dict[str, list[dict]] = {
        "plain loop 64 px": [],
        "flairseg 64 px": [],
        "flairseg 128 px": [],
    }
    for seed in range(args.seeds):
        rows["plain loop 64 px"].append(
            plain_run(root, list(split.train), list(split.val), 64, seed)
        )
        rows["flairseg 64 px"].append(ours_run(root, 64, seed))
        rows["flairseg 128 px"].append(ours_run(root, 128, seed))
        print(
            f"seed {seed}: "
            + "  ".join(
                f"{k}: {v[-1]['val_volume_dice']:.3f} ({v[-1]['seconds']:.0f} s)"
                for k, v in rows.items()
            ),
            flush=True,
        )
    base = statistics.mean(r["val_volume_dice"] for r in rows["plain loop 64 px"])
    print(f"\n{'run':<18} {'val volume Dice (mean, min-max)':>32} {'s/run':>7} {'vs plain':>9}")
    summary = {}
    for name, runs in rows.items():
        d = [r["val_volume_dice"] for r in runs]
        sec = statistics.mean(r["seconds"] for r in runs)
        summary[name] = {
            "val_volume_dice_mean": statistics.mean(d),
            "per_seed": d,
            "seconds_mean": sec,
        }
        print(
            f"{name:<18} {statistics.mean(d):>12.3f} ({min(d):.3f}-{max(d):.3f}){'':>8} {sec:>7.1f} {statistics.mean(d) / base:>8.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"split": split.to_dict(), "epochs": EPOCHS, "runs": summary}, indent=2)
        )


if __name__ == "__main__":
    main()

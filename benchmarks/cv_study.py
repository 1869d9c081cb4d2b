"""Does cross-validation pick better configs? One search on a single split and with --folds K.

    python -m benchmarks.cv_study --data ../shared/data/lgg-32/kaggle_3m \
        [--split-seeds 0 1] [--folds 4] [--trials 8] [--max-epochs 20] [--json FILE]

Three sections, printed as they finish (and kept in --json after each):

quality  For each outer test split (`split_seed`), the same search twice: once ranked
         on one validation split (val_fraction 0.2), once with `--folds K` over all
         non-test patients. The same test patients either way (flairseg.folds holds
         them out as the single split does). Both run the same configs: the
         combo_alpha space with the seed's two points first, then Optuna's seeded
         random start-up proposals (start-up trials = trials, so no proposal depends
         on a score). U-Net width 16 at 64 px, ASHA (grace 3, reduction 3), two
         trials at a time, one CPU each. Per study: the chosen config, its val
         estimate, its test IoU and volume Dice (cross-validated: the fold ensemble
         and one fold model), the gap between estimate and test, epochs, wall time.
asha     The cross-validated study of the first split seed again, without early
         stopping: does ASHA save half the epochs and find the same best trial?
cost     One config, E epochs: `flairseg.cv.train_folds` (K models in lockstep, one
         process) against K separate `flairseg.engine.train` runs on the same folds,
         back to back in the same process and thread count. Target: at most 1.05x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from flairseg.train import write_json
from study import search as searches


def study(name: str, args, folder: Path, split_seed: int, folds: int | None, asha: bool) -> dict:
    """Run one study in a child process; its --json summary plus the wall seconds."""
    raw = searches.read_yaml(searches.resolve("combo_alpha"))
    raw.pop("laptop")
    raw["fixed"] = {**raw["fixed"], "image_size": 64, "split_seed": split_seed}
    raw["fixed"]["unet"] = {"width": 16}
    raw["trials"] = args.trials
    raw["sampler"] = {"startup_trials": args.trials}
    raw["concurrency"] = 2
    raw["resources"] = {"cpus": 1, "gpus": 0}
    raw["asha"] = (
        {"max_epochs": args.max_epochs, "grace_period": 3, "reduction_factor": 3}
        if asha
        else {"enabled": False, "max_epochs": args.max_epochs}
    )
    if folds:
        raw["cv"] = {"folds": folds}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = folder / f"{name}.json"
    argv = [
        sys.executable, "-m", "study.run", "--search", str(path), "--data", str(args.data),
        "--profile", "full", "--storage", str(folder / "studies"),
        "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}", "--json", str(out),
        "--status-every", "120",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=folder, stdout=sys.stderr)
    summary = json.loads(out.read_text())
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    return summary


def row(label: str, s: dict) -> dict[str, Any]:
    """The figures of one study, cross-validated or not, under one set of names."""
    cfg = s["best_config"]
    cv = "folds" in s
    out = {
        "study": label,
        "best_trial": s["best_trial"],
        "alpha": cfg["alpha"],
        "lr": cfg["lr"],
        "epochs_of_best": s["best_epochs"],
        "val_iou": s["val_iou"],
        "val_iou_sd": s.get("val_iou_std"),
        "test_iou": s["test_iou"],  # cross-validated: the fold ensemble
        "test_volume_dice": s["test_volume_dice"],
        "test_iou_one_model": s["test_iou_single"] if cv else s["test_iou"],
        "test_volume_dice_one_model": s["test_volume_dice_single"] if cv else s["test_volume_dice"],
        "trial_epochs": s["epochs_spent"],
        "model_epochs": s["epochs_spent"] * (s["folds"] if cv else 1),
        "wall_s": s["wall_s"],
    }
    out["gap"] = out["val_iou"] - out["test_iou"]
    out["gap_one_model"] = out["val_iou"] - out["test_iou_one_model"]
    return out


def print_quality(rows: list[dict]) -> None:
    print(
        f"\n{'study':<28}{'alpha':>7}{'lr':>9}{'val IoU':>16}{'test IoU':>10}{'vol Dice':>10}"
        f"{'1-model IoU':>12}{'1-model vD':>11}{'gap':>8}{'1-m gap':>8}{'epochs':>8}{'wall s':>8}"
    )
    for r in rows:
        val = f"{r['val_iou']:.3f}" + (
            f" ± {r['val_iou_sd']:.3f}" if r["val_iou_sd"] is not None else ""
        )
        print(
            f"{r['study']:<28}{r['alpha']:>7.3f}{r['lr']:>9.2e}{val:>16}{r['test_iou']:>10.3f}"
            f"{r['test_volume_dice']:>10.3f}{r['test_iou_one_model']:>12.3f}"
            f"{r['test_volume_dice_one_model']:>11.3f}{r['gap']:>+8.3f}{r['gap_one_model']:>+8.3f}"
            f"{r['model_epochs']:>8}{r['wall_s']:>8.0f}",
            flush=True,
        )


def cost(args) -> dict[str, float]:
    """K fold models in lockstep against K separate runs: same folds, epochs, threads."""
    import torch

    from flairseg.config import TrainConfig
    from flairseg.cv import train_folds
    from flairseg.dataset import load_dataset
    from flairseg.engine import train
    from flairseg.folds import make_folds

    torch.set_num_threads(args.threads)
    config = TrainConfig(
        model="unet", loss="combo", alpha=0.5, lr=1e-4, width=16, image_size=64,
        epochs=args.cost_epochs,
    )  # fmt: skip
    data = load_dataset(args.data, config)
    train(config.replace(epochs=1), data)  # warm-up: allocator, kernels, caches
    timings: dict[str, list[float]] = {"lockstep": [], "separate": []}

    def lockstep() -> None:
        plan, folds = make_folds(data, args.folds, config.split_seed)
        train_folds(config, plan, folds)

    def separate() -> None:
        _, folds = make_folds(data, args.folds, config.split_seed)
        for fold in folds:
            train(config, fold)

    for i in range(args.repeats):  # alternating, so a drift in the machine's load cancels
        for name, fn in sorted(
            {"lockstep": lockstep, "separate": separate}.items(), reverse=i % 2 == 1
        ):
            started = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - started)
    lock, sep = min(timings["lockstep"]), min(timings["separate"])
    print(
        f"\ncost, {args.folds} folds x {args.cost_epochs} epochs, {args.threads} threads, best of "
        f"{args.repeats}: lockstep {lock:.1f} s, separate {sep:.1f} s, ratio {lock / sep:.3f}x "
        f"(all runs: lockstep {[round(t, 1) for t in timings['lockstep']]}, "
        f"separate {[round(t, 1) for t in timings['separate']]})",
        flush=True,
    )
    return {"lockstep_s": lock, "separate_s": sep, "ratio": lock / sep, "runs": timings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FLAIRSEG_LGG_32"))
    p.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--sections", default="quality,asha,cost")
    p.add_argument("--cost-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write the figures here (after every section)")
    args = p.parse_args()
    if not args.data or not Path(args.data).is_dir():
        sys.exit("give --data or set FLAIRSEG_LGG_32 to the kaggle_3m folder of lgg-32")
    args.data = str(Path(args.data).resolve())  # the studies run in their own folders
    sections = args.sections.split(",")
    record: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"}}

    def keep() -> None:
        if args.json:
            write_json(args.json, record)

    with tempfile.TemporaryDirectory(prefix="flairseg-cv-") as tmp:
        folder = Path(tmp)
        summaries: dict[str, dict] = {}
        if "quality" in sections or "asha" in sections:
            rows = []
            seeds = args.split_seeds if "quality" in sections else args.split_seeds[:1]
            for seed in seeds:
                for folds in [None, args.folds] if "quality" in sections else [args.folds]:
                    label = f"split {seed}, " + (f"{folds}-fold CV" if folds else "one val split")
                    name = f"s{seed}-{'cv' if folds else 'single'}"
                    summaries[name] = study(name, args, folder, seed, folds, asha=True)
                    rows.append(row(label, summaries[name]))
                    print_quality(rows)
            record["quality"] = rows
            keep()
        if "asha" in sections:
            seed = args.split_seeds[0]
            with_asha = summaries[f"s{seed}-cv"]
            without = study(f"s{seed}-cv-full", args, folder, seed, args.folds, asha=False)
            both = [row("CV, ASHA", with_asha), row("CV, no early stopping", without)]
            print_quality(both)
            ratio = with_asha["epochs_spent"] / without["epochs_spent"]
            same = with_asha["best_config"] == without["best_config"]
            print(
                f"ASHA/no stopping (cross-validated, split {seed}): epochs {ratio:.2f}x, "
                f"wall {with_asha['wall_s'] / without['wall_s']:.2f}x, same best config: {same}",
                flush=True,
            )
            record["asha"] = {"rows": both, "epoch_ratio": ratio, "same_best": same}
            keep()
    if "cost" in sections:
        record["cost"] = cost(args)
        keep()


if __name__ == "__main__":
    main()

"""Does ASHA earn its keep? `combo_alpha` on real MRI with and without early stopping, side by side.

    FLAIRSEG_LGG_SAMPLE=../shared/data/lgg-sample/kaggle_3m python -m benchmarks.asha_real \
        [--trials 12] [--max-epochs 30] [--grace 3] [--json FILE]

Both studies run the same trials: the combo_alpha space (alpha, lr) with the seed's
two points first, then Optuna's seeded random start-up proposals (start-up trials =
trials, so the proposals do not depend on the scores and both sides get the same
configs). U-Net width 16 at 64 px, two trials at a time, one CPU each. One study
uses ASHA (grace period `--grace`, reduction factor 3, up to `--max-epochs`), the
other trains every trial to `--max-epochs`. Printed: epochs spent, best val IoU,
and the best trial's test IoU, with the ratios.
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

import yaml

from flairseg.train import write_json
from study import search as searches


def run(name: str, data: Path, folder: Path, args, asha: bool) -> tuple[dict, float]:
    raw = searches.read_yaml(searches.resolve("combo_alpha"))
    raw.pop("laptop")
    raw["fixed"] = {**raw["fixed"], "image_size": 64, "unet": {"width": 16}}
    raw["trials"] = args.trials
    raw["sampler"] = {"startup_trials": args.trials}
    raw["concurrency"] = 2
    raw["resources"] = {"cpus": 1, "gpus": 0}
    if asha:
        raw["asha"] = {
            "max_epochs": args.max_epochs,
            "grace_period": args.grace,
            "reduction_factor": 3,
        }
    else:
        raw["asha"] = {"enabled": False, "max_epochs": args.max_epochs}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = folder / f"{name}.json"
    argv = [
        sys.executable, "-m", "study.run", "--search", str(path), "--data", str(data),
        "--profile", "full", "--storage", str(folder / "studies"),
        "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}", "--json", str(out),
        "--status-every", "60",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=folder, stdout=sys.stderr)
    return json.loads(out.read_text()), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FLAIRSEG_LGG_SAMPLE"))
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--grace", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if not args.data or not Path(args.data).is_dir():
        sys.exit("give --data or set FLAIRSEG_LGG_SAMPLE to the kaggle_3m folder of the sample")
    with tempfile.TemporaryDirectory(prefix="flairseg-asha-") as tmp:
        folder = Path(tmp)
        with_asha, asha_s = run("with_asha", Path(args.data), folder, args, asha=True)
        without, full_s = run("without_asha", Path(args.data), folder, args, asha=False)
    rows = [("ASHA", with_asha, asha_s), ("no early stopping", without, full_s)]
    print(
        f"combo_alpha on {args.data}: {args.trials} trials, up to {args.max_epochs} epochs, 64 px"
    )
    print(f"{'':<20}{'epochs':>8}{'best val_iou':>14}{'test_iou':>10}{'wall s':>8}  stopped")
    for label, s, secs in rows:
        print(
            f"{label:<20}{s['epochs_spent']:>8}{s['val_iou']:>14.4f}{s.get('test_iou', float('nan')):>10.4f}"
            f"{secs:>8.0f}  {s['trials'].get('stopped', 0)} ({s['stopped_at_epoch']})"
        )
    ratio = with_asha["epochs_spent"] / without["epochs_spent"]
    gap = with_asha["val_iou"] - without["val_iou"]
    print(
        f"ASHA/no stopping: epochs {ratio:.2f}x, best val_iou {gap:+.4f}, wall {asha_s / full_s:.2f}x"
    )
    if args.json:
        write_json(
            args.json,
            {
                "trials": args.trials,
                "max_epochs": args.max_epochs,
                "grace": args.grace,
                "asha": {
                    k: with_asha[k]
                    for k in ("epochs_spent", "val_iou", "test_iou", "trials", "best_config")
                },
                "no_stopping": {
                    k: without[k]
                    for k in ("epochs_spent", "val_iou", "test_iou", "trials", "best_config")
                },
                "epoch_ratio": round(ratio, 3),
                "val_iou_gap": round(gap, 4),
                "wall_s": {"asha": round(asha_s, 1), "no_stopping": round(full_s, 1)},
            },
        )


if __name__ == "__main__":
    main()

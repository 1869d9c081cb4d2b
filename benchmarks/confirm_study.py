"""Does confirming the finalists pick what training every config out would pick? lgg-32.

    python -m benchmarks.confirm_study --data ../shared/data/lgg-32/kaggle_3m \
        [--split-seeds 0 1] [--folds 4] [--trials 12] [--max-epochs 12] [--finalists 3] \
        [--json FILE]

For each outer test split (`split_seed`), the same configs twice, cross-validated
(`--folds K` over the non-test patients): the combo_alpha space with the seed's two points
first, then Optuna's seeded random start-up proposals (start-up trials = trials, so no
proposal depends on a score and both studies run the same configs). U-Net width 16 at
64 px, two trials at a time, one CPU each, decisions in the trials' order.

- `asha`: ASHA (grace 3, reduction 3), then the confirmation stage: the top K finalists
  trained to the full budget on their folds. Two picks: the search's own (the best last
  value, what `--no-confirm` answers) and the confirmed one.
- `full`: no early stopping, no confirmation: every config trained out. Its pick is the
  reference.

This script scores each pick's models itself, the same way for all three: on the split's
test patients (the fold ensemble, one volume per patient) and out of fold (each non-test
patient by the fold model that did not train on it: what the studies chose on). The
search-only and confirmed picks are compared with the reference pick paired over patients
(study.compare: bootstrap 95% CI, Wilcoxon). Model-epochs: trial epochs x folds, the
confirmation's included. Goal (issue 25): the confirmed pick is the reference pick or
within noise of it, at no more than 0.6x the reference study's model-epochs.
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

PICKS = ("search only", "confirmed", "no early stopping")


def run_study(name: str, args, folder: Path, split_seed: int, asha: bool) -> dict:
    """One study in a child process: its --json summary, wall seconds, Optuna and Tune paths."""
    raw = searches.read_yaml(searches.resolve("combo_alpha"))
    raw.pop("laptop")
    raw["fixed"] = {**raw["fixed"], "image_size": 64, "split_seed": split_seed}
    raw["fixed"]["unet"] = {"width": 16}
    raw.update(trials=args.trials, concurrency=2, decisions="fixed")
    raw["sampler"] = {"startup_trials": args.trials}
    raw["resources"] = {"cpus": 1, "gpus": 0}
    raw["cv"] = {"folds": args.folds}
    raw["asha"] = (
        {"max_epochs": args.max_epochs, "grace_period": 3, "reduction_factor": 3}
        if asha
        else {"enabled": False, "max_epochs": args.max_epochs}
    )
    raw["confirm"] = {"finalists": args.finalists} if asha else False
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    out = folder / f"{name}.json"
    argv = [
        sys.executable, "-m", "study.run", "--search", str(folder / f"{name}.yaml"),
        "--data", str(args.data), "--profile", "full", "--storage", str(folder / "studies"),
        "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}", "--json", str(out),
        "--status-every", "120", "--no-register",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=folder, stdout=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"study {name} failed (exit {done.returncode}): its output is above")
    summary = json.loads(out.read_text())
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["optuna"] = f"sqlite:///{folder / 'studies' / 'optuna.db'}"
    summary["tune_path"] = str(folder / "studies" / name / "run-1")
    summary["name"] = name
    return summary


def search_pick(summary: dict) -> tuple[int, str]:
    """The study's best trial by its last value (ledger.best_trial): number, newest
    checkpoint."""
    import optuna

    from study import ledger, settled

    study = optuna.load_study(study_name=summary["name"], storage=summary["optuna"])
    best = ledger.best_trial(study)
    where = settled.latest_checkpoint(summary["tune_path"], best.number)
    return best.number, where


def scores(checkpoint: str, data_root: str) -> dict[str, Any]:
    """A cross-validated checkpoint's config (alpha, lr, epochs trained) and per-patient
    scores: `test` (the fold ensemble) and `oof` (each non-test patient by its own fold's
    model), fp32 on the CPU."""
    import torch

    from flairseg.checkpoint import model_from_checkpoint
    from flairseg.dataset import load_dataset
    from flairseg.engine import load_checkpoint
    from flairseg.evolution import STATE_FILE
    from flairseg.folds import make_folds
    from flairseg.patients import patient_scores

    ckpt = load_checkpoint(Path(checkpoint) / STATE_FILE)
    config, model = model_from_checkpoint(ckpt)
    data = load_dataset(data_root, config)
    _, folds = make_folds(data, len(model.members), config.split_seed)
    out: dict[str, Any] = {"alpha": config.alpha, "lr": config.lr, "epochs": int(ckpt["epoch"])}
    out["test"] = patient_scores(lambda x: torch.sigmoid(model(x)), data.test)
    out["oof"] = {}
    for member, fold in zip(model.members, folds, strict=True):
        out["oof"].update(patient_scores(lambda x, m=member: torch.sigmoid(m(x)), fold.val))
    return out


def mean(per_patient: dict[str, dict[str, float]], key: str) -> float:
    return sum(s[key] for s in per_patient.values()) / len(per_patient)


def one_split(args, folder: Path, seed: int) -> dict[str, Any]:
    """Both studies of one outer split, the three picks scored and compared."""
    asha = run_study(f"s{seed}-asha", args, folder, seed, asha=True)
    full = run_study(f"s{seed}-full", args, folder, seed, asha=False)
    confirmation = asha.get("confirmation") or {}
    winner = next(f for f in confirmation["finalists"] if f["trial"] == confirmation["winner"])
    number, where = search_pick(asha)
    ref_number, ref_where = search_pick(full)
    folds = args.folds
    search_me = asha["epochs_spent"] * folds
    # each finalist's folds trained to the full budget, but for those the search had trained
    # out (kept: study.confirm)
    trained = len(confirmation["finalists"]) - len(confirmation.get("kept", []))
    confirm_me = trained * folds * args.max_epochs
    picks = {
        "search only": (number, where, search_me, asha["seconds"]),
        "confirmed": (
            winner["trial"], winner["checkpoint"],
            search_me + confirm_me, asha["seconds"] + confirmation.get("seconds", 0.0),
        ),
        "no early stopping": (ref_number, ref_where, full["epochs_spent"] * folds, full["seconds"]),
    }  # fmt: skip
    rows = {}
    for label, (trial, ckpt, model_epochs, seconds) in picks.items():
        got = scores(ckpt, args.data)
        rows[label] = {
            "trial": trial,
            "alpha": got["alpha"],
            "lr": got["lr"],
            "epochs": got["epochs"],
            "model_epochs": model_epochs,
            "wall_s": round(seconds, 1),
            "test_volume_dice": mean(got["test"], "volume_dice"),
            "test_iou": mean(got["test"], "iou"),
            "oof_volume_dice": mean(got["oof"], "volume_dice"),
            "patients": {"test": got["test"], "oof": got["oof"]},
        }
    return {"split_seed": seed, "rows": rows, "comparisons": compare_to_reference(rows)}


def compare_to_reference(rows: dict[str, dict]) -> dict[str, dict]:
    """Each pick against the no-early-stopping pick, per patient volume Dice, test and OOF."""
    from study import compare

    ref = rows["no early stopping"]["patients"]
    out = {}
    for label in ("search only", "confirmed"):
        mine = rows[label]["patients"]
        out[label] = {
            where: compare.paired(
                {p: s["volume_dice"] for p, s in mine[where].items()},
                {p: s["volume_dice"] for p, s in ref[where].items()},
                "volume_dice",
            ).to_dict()
            for where in ("test", "oof")
        }
    return out


def print_split(split: dict[str, Any]) -> None:
    rows, ref = split["rows"], split["rows"]["no early stopping"]
    print(f"\nsplit seed {split['split_seed']}")
    print(
        f"{'pick':<19}{'trial':>6}{'alpha':>7}{'lr':>9}{'epochs':>7}{'test vDice':>11}{'test IoU':>9}"
        f"{'OOF vDice':>10}{'model-ep':>9}{'x ref':>6}{'wall s':>8}   paired with the reference"
    )
    for label in PICKS:
        r = rows[label]
        paired = ""
        if label in split["comparisons"]:
            t, o = split["comparisons"][label]["test"], split["comparisons"][label]["oof"]
            paired = (
                f"test {t['mean_difference']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] "
                f"p {t['p_value']:.2f} {t['verdict']}; OOF {o['mean_difference']:+.3f} "
                f"[{o['ci_low']:+.3f}, {o['ci_high']:+.3f}] p {o['p_value']:.2g} {o['verdict']}"
            )
        print(
            f"{label:<19}{r['trial']:>6}{r['alpha']:>7.3f}{r['lr']:>9.1e}{r['epochs']:>7}"
            f"{r['test_volume_dice']:>11.3f}"
            f"{r['test_iou']:>9.3f}{r['oof_volume_dice']:>10.3f}{r['model_epochs']:>9}"
            f"{r['model_epochs'] / ref['model_epochs']:>6.2f}{r['wall_s']:>8.0f}   {paired}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FLAIRSEG_LGG_32"))
    p.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--finalists", type=int, default=3)
    p.add_argument("--json", help="write the figures here (after every split)")
    args = p.parse_args()
    if not args.data or not Path(args.data).is_dir():
        print(
            "give --data or set FLAIRSEG_LGG_32 to the kaggle_3m folder of lgg-32", file=sys.stderr
        )
        sys.exit(2)
    args.data = str(Path(args.data).resolve())  # the studies run in their own folders
    record: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"}}
    record["splits"] = []
    with tempfile.TemporaryDirectory(prefix="flairseg-confirm-") as tmp:
        for seed in args.split_seeds:
            folder = Path(tmp) / f"split-{seed}"
            folder.mkdir()
            record["splits"].append(one_split(args, folder, seed))
            print_split(record["splits"][-1])
            if args.json:
                write_json(args.json, record)


if __name__ == "__main__":
    main()

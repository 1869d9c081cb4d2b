"""The `seed_vs_ours` study as a table: every run's last checkpoint scored on val and test.

    python -m study.run --search seed_vs_ours --data DIR --mlflow-uri URI --storage DIR
    python -m benchmarks.seed_vs_ours --data DIR --mlflow-uri URI [--study seed_vs_ours]

A study scores only its best trial on test; a comparison of fixed configurations wants
each one's, and since nothing is chosen by these scores, test is not spent on a choice.
Each trial run's checkpoint (its weights after its last epoch) is scored on the study's
own val and test patients (the split its params record), on the GPU where there is one
(on the fast path, as the trials ran), else on the CPU. Printed: one
markdown row per run, in the search file's order, with its epochs and its training
seconds (the sum of its logged `epoch_seconds`, each epoch as Tune timed it: training,
the val pass and the checkpoint).
`--json FILE` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from flairseg.config import TrainConfig
from flairseg.dataset import load_dataset
from study import search as searches
from study.results import score_checkpoint
from study.schema import Param, Role, Tag, client, study_runs
from study.search_checks import SHARED

COLUMNS = ("val_iou", "val_pixel_accuracy", "val_mean_accuracy")
COLUMNS += ("test_iou", "test_pixel_accuracy", "test_mean_accuracy")


def split_config(params: dict[str, str]) -> TrainConfig:
    """The settings that fix the data and its split, from a trial run's params."""
    base = TrainConfig()
    return base.replace(**{k: type(getattr(base, k))(params[k]) for k in SHARED})


def rows(uri: str, experiment: str, study: str, data_dir: Path) -> list[dict[str, Any]]:
    """One row per trial run of `study`: its grid name, epochs, seconds and scores."""
    c = client(uri)
    found = c.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {uri}")
    runs = study_runs(c, found.experiment_id, study, Role.TRIAL)
    order = [g["name"] for g in searches.load("seed_vs_ours").grid]
    name_of = {r.info.run_id: r.data.params.get(Param.SAMPLED_PREFIX + "run", "?") for r in runs}
    runs.sort(key=lambda r: order.index(n) if (n := name_of[r.info.run_id]) in order else 99)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data, out = None, []
    for run in runs:
        row: dict[str, Any] = {"run": name_of[run.info.run_id]}
        row["status"] = run.data.tags.get(Tag.STATUS, "?")
        row["epochs"] = int(run.data.tags.get(Tag.EPOCHS, 0))
        history = c.get_metric_history(run.info.run_id, "epoch_seconds")
        row["seconds"] = round(sum(m.value for m in history), 1)
        if Tag.CHECKPOINT in run.data.tags:
            if data is None:
                data = load_dataset(data_dir, split_config(run.data.params))
            _, _, scores = score_checkpoint(run.data.tags[Tag.CHECKPOINT], data, device=device)
            row.update({k: round(scores[k], 4) for k in COLUMNS if k in scores})
        out.append(row)
    return out


def table(found: list[dict[str, Any]]) -> str:
    head = "| run | epochs | " + " | ".join(COLUMNS) + " | seconds |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)]
    for r in found:
        cells = [f"{r[k]:.4f}" if k in r else r["status"] for k in COLUMNS]
        lines.append(
            f"| {r['run']} | {r['epochs']} | " + " | ".join(cells) + f" | {r['seconds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the study's --data")
    parser.add_argument("--mlflow-uri", required=True, help="the study's --mlflow-uri")
    parser.add_argument("--experiment", default="seed_vs_ours")
    parser.add_argument("--study", default="seed_vs_ours")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    found = rows(args.mlflow_uri, args.experiment, args.study, args.data)
    print(table(found))
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

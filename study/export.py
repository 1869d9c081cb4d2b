"""A study's trials as a table, one row per trial, from MLflow: `trials_frame` for a
notebook, `python -m study.export` for a file.

    python -m study.export --study S [--experiment E] [--mlflow-uri URI]
        [--format csv|parquet|json] [--out FILE]

Columns: `trial` (the Optuna number), `run_id`, `parent_run_id`, `name`, `run_status`
(MLflow's), `status` (completed, stopped at epoch N, failed, ...), `model`, `loss`,
`epochs`, `planned_epochs`, `objective_last` and `objective_best` (the study's objective at
the trial's last epoch and at its best one, by the objective's direction), then
`params.NAME` for every training setting (numbers as numbers) and `metrics.NAME` for every
metric's last value (a cross-validated trial's `_std` spreads and `foldK/` values
included), as `mlflow.search_runs` names them. Rows by trial number. Without `--out` the
table goes to standard output.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flairseg.errors import ArgumentParser, ConfigError, run_cli
from study import schema
from study.schema import Param, Role, Tag

FORMATS = ("csv", "parquet", "json")


def trials_frame(uri: str, experiment: str, study: str | None = None) -> Any:
    """The trials of `study` (the experiment's most recent one if None) in experiment
    `experiment` of the MLflow store at `uri`, as a pandas DataFrame (columns as above;
    its `attrs` hold the study, the objective and its direction)."""
    import pandas as pd

    c = schema.client(uri)
    exp = schema.experiment_named(c, uri, experiment)
    parents = schema.study_runs(c, exp.experiment_id, study, role=Role.STUDY)
    if not parents:
        where = f"study {study}" if study else "no study"
        raise ConfigError(f"--experiment {experiment}: {where} there (made by study.run)")
    latest = max(parents, key=lambda p: p.info.start_time)
    study = latest.data.tags[Tag.STUDY]
    metric, mode = schema.load_objective(latest.data.params.get(Param.OBJECTIVE))
    runs = schema.study_runs(c, exp.experiment_id, study, role=Role.TRIAL)
    rows = [_row(c, run, metric, mode) for run in runs]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("trial", kind="stable").reset_index(drop=True)
        frame = _numbers(frame)
    frame.attrs.update({"study": study, "objective": metric, "mode": mode})
    return frame


def _row(c: Any, run: Any, metric: str, mode: str) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    history = [m.value for m in c.get_metric_history(run.info.run_id, metric)]
    finite = [v for v in history if math.isfinite(v)]
    best = (max if mode == "max" else min)(finite) if finite else None
    epochs = tags.get(Tag.EPOCHS, tags.get(Tag.EPOCHS_LOGGED))
    row: dict[str, Any] = {
        "trial": int(tags.get(Tag.OPTUNA_TRIAL, -1)),
        "run_id": run.info.run_id,
        "parent_run_id": tags.get(Tag.PARENT),
        "name": run.info.run_name,
        "run_status": run.info.status,
        "status": tags.get(Tag.STATUS),
        "model": tags.get(Tag.MODEL, params.get("model")),
        "loss": tags.get(Tag.LOSS, params.get("loss")),
        "epochs": int(epochs) if epochs else None,
        "planned_epochs": int(tags[Tag.PLANNED_EPOCHS]) if tags.get(Tag.PLANNED_EPOCHS) else None,
        "objective_last": run.data.metrics.get(metric),
        "objective_best": best,
    }
    row |= {f"params.{k}": v for k, v in sorted(params.items())}
    row |= {f"metrics.{k}": v for k, v in sorted(run.data.metrics.items())}
    return row


def _numbers(frame: Any) -> Any:
    """A `params.` column whose every value reads as a number holds numbers, one of True
    and False booleans (MLflow keeps params as text)."""
    import pandas as pd

    for column in [c for c in frame.columns if c.startswith("params.")]:
        if set(frame[column].dropna()) <= {"True", "False"}:
            frame[column] = frame[column].map({"True": True, "False": False})
            continue
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.notna().sum() == frame[column].notna().sum():
            frame[column] = converted
    return frame


def write(frame: Any, fmt: str, out: str | None) -> None:
    """The table in `fmt`, to the file `out` (standard output when None)."""
    if fmt == "parquet":
        if out is None:
            frame.to_parquet(sys.stdout.buffer, index=False)
        else:
            frame.to_parquet(out, index=False)
        return
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1)
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        Path(out).write_text(text)


def build_parser() -> ArgumentParser:
    """The command line's flags (the documentation's CLI reference is made from it)."""
    parser = ArgumentParser(prog="python -m study.export", description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study (study.run's --study)")
    parser.add_argument("--experiment", help="the MLflow experiment (default: the study's name)")
    parser.add_argument(
        "--mlflow-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db"
    )
    parser.add_argument("--format", choices=FORMATS, default="csv", help="default csv")
    parser.add_argument("--out", help="the file (default: standard output)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m study.export`: bad input exits 2 in one line and writes nothing."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a folder; give a file name")
    if args.out and not Path(args.out).parent.is_dir():
        raise ConfigError(f"--out {args.out}: no such folder {Path(args.out).parent}")
    uri = args.mlflow_uri or schema.default_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--mlflow-uri {uri}: no such MLflow database")
    frame = trials_frame(uri, args.experiment or args.study, args.study)
    write(frame, args.format, args.out)
    if args.out:
        print(f"wrote {args.out}: {len(frame)} trials of study {args.study}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)

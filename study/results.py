"""What an invocation produced: counts read back from MLflow, the best trial scored once on
test, and the HTML report.

Selection stays on val. Test describes the study's best trial and, for the family
report, the best trial of each model x loss group; each is scored once, from its
checkpoint, on the trials' device and precision so val matches what the trial logged.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flairseg.config import TrainConfig
from flairseg.cv import score_folds
from flairseg.dataset import Dataset
from flairseg.engine import FAST, Speed, load_checkpoint, model_from_checkpoint, score_model
from flairseg.ensemble import Ensemble
from flairseg.evolution import STATE_FILE
from flairseg.folds import make_folds, split_of
from study import budget, front, ledger, schema, tracking
from study import search as searches
from study.schema import Artifact, Role, Tag

if TYPE_CHECKING:
    from study.invocation import Opened

SCORED = ("completed", "stopped", "budget")  # trials that end with a value


def summarise(
    opened: Opened, seconds: float, device: torch.device, confirmed: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Counts from the invocation's MLflow children; the study's best trial scored on test.

    The summary goes on the parent run as summary.json, and is what --json writes.
    What mattered over the study so far (study.importance) goes in it and on the parent.
    """
    from study import importance

    plan = opened.plan
    c = opened.client
    trial_runs = tracking.study_runs(c, plan.experiment_id, plan.study_name, role=Role.TRIAL)
    children = [r for r in trial_runs if r.data.tags.get(Tag.PARENT) == opened.parent_id]
    summary: dict[str, Any] = {
        "study": plan.study_name,
        "search": plan.search.name,
        **count_trials(children),
        "objective": plan.search.metric,
        "study_trials": len(opened.study.trials),
    }
    made = None
    if plan.search.cost is not None:  # a second objective: the front's answer (study.front)
        made = front.record(trial_runs, plan.search.metric, plan.search.mode, plan.search.cost)
        summary["front"] = made
        if made is not None:
            tracking.log_json(c, opened.parent_id, made, Artifact.FRONT)
            c.set_tag(opened.parent_id, Tag.ANSWER, front.lines(made)[1][:5000])
    answer = made["answer"] if made else None
    summary.update(score_best(opened, trial_runs, device, confirmed, answer))
    summary["confirmation"] = confirmed  # None: the study's answer is unconfirmed
    counts = summary["trials"]
    made = budget.record(opened.record.trials, sum(counts.values()), counts.get("budget", 0))
    if made is not None:
        summary["time_budget"] = made
    summary["seconds"] = round(seconds, 1)
    summary["invocation"] = opened.record.number
    summary["data"] = str(opened.data_dir)
    folds = plan.search.folds
    seed = TrainConfig.from_dict(plan.search.fixed).split_seed
    summary["split"] = split_of(opened.data, folds, seed)
    if folds:
        summary["folds"] = folds
    summary["importance"] = importance.record(  # never raises: a failure is a warning
        c, opened.parent_id, opened.study, plan.search, trial_runs
    )
    tracking.log_json(c, opened.parent_id, summary, Artifact.SUMMARY)
    return summary


def count_trials(runs: list) -> dict[str, Any]:
    """Trials by status, ASHA's stops by epoch, and the epochs spent against the epochs
    the same trials would have run without early stopping."""
    by_status: dict[str, int] = {}
    stops: dict[int, int] = {}
    spent = without = 0
    for run in runs:
        tags = run.data.tags
        status = tags.get(Tag.STATUS, "unknown")
        epochs = int(tags.get(Tag.EPOCHS, tags.get(Tag.EPOCHS_LOGGED, 0)) or 0)
        planned = int(tags.get(Tag.PLANNED_EPOCHS, epochs) or epochs)
        key = "stopped" if schema.is_stopped(status) else status
        key = "budget" if schema.is_budget_stopped(status) else key
        by_status[key] = by_status.get(key, 0) + 1
        if key == "stopped":
            stops[epochs] = stops.get(epochs, 0) + 1
        spent += epochs
        without += epochs if key in ("failed", "killed") else planned
    return {
        "trials": by_status,
        "stopped_at_epoch": {str(k): v for k, v in sorted(stops.items())},
        "epochs_spent": spent,
        "epochs_without_stopping": without,
    }


def score_best(
    opened: Opened,
    trial_runs: list,
    device: torch.device,
    confirmed: dict[str, Any] | None = None,
    answer: int | None = None,
) -> dict[str, Any]:
    """The study's answer, scored on val and test and logged on the parent run: the
    confirmed winner (its models as the confirmation trained them) or, unconfirmed, the
    search's best trial; then each group's best on test. Empty when no trial completed
    or left a checkpoint."""
    study, plan, c = opened.study, opened.plan, opened.client
    winner = confirmed_winner(confirmed)
    if winner is not None:
        number, where = int(winner["trial"]), winner["checkpoint"]
    elif answer is not None:  # a search with a cost: its front's answer (study.front)
        number, where = answer, None
    else:
        best = ledger.best_trial(study)  # COMPLETE, or stopped by ASHA (PRUNED): its last value
        number, where = (best.number, None) if best is not None else (None, None)
    if number is None:
        return {}
    runs = [r for r in trial_runs if r.data.tags.get(Tag.OPTUNA_TRIAL) == str(number)]
    if not runs or (where is None and Tag.CHECKPOINT not in runs[0].data.tags):
        return {}
    run = runs[0]
    config, ckpt, scores = score_checkpoint(
        where or run.data.tags[Tag.CHECKPOINT], opened.data, c, opened.parent_id, device, plan.speed
    )
    found = {
        "best_trial": number,
        "best_run": run.info.run_id,
        "best_name": run.info.run_name,
        "best_this_invocation": run.data.tags.get(Tag.PARENT) == opened.parent_id,
        "best_epochs": int(ckpt["epoch"]),
        "best_confirmed": winner is not None,
        "best_config": config.to_dict(),
        **{k: round(v, 6) for k, v in scores.items()},
    }
    tracking.log_metrics(c, opened.parent_id, scores)
    tracking.log_json(c, opened.parent_id, config.to_dict(), Artifact.BEST_CONFIG)
    c.set_tag(opened.parent_id, Tag.BEST_TRIAL, str(number))
    c.set_tag(opened.parent_id, Tag.BEST_RUN, run.info.run_id)
    if opened.data.test is not None:
        score_group_bests(c, trial_runs, plan.search, opened.data, device, plan.speed)
    return found


def confirmed_winner(confirmed: dict[str, Any] | None) -> dict[str, Any] | None:
    """The winning finalist of a confirmation record, None when there is none."""
    if not confirmed or confirmed.get("winner") is None:
        return None
    return next((f for f in confirmed["finalists"] if f["trial"] == confirmed["winner"]), None)


def succeeded(summary: dict[str, Any]) -> bool:
    """Some trial completed (or was stopped by ASHA) and the best one was scored."""
    return (
        "best_config" in summary and sum(v for k, v in summary["trials"].items() if k in SCORED) > 0
    )


def score_checkpoint(
    where: str,
    data: Dataset,
    c: Any = None,
    parent_id: str | None = None,
    device: torch.device | None = None,
    speed: Speed = FAST,
) -> tuple[TrainConfig, dict[str, Any], dict[str, float]]:
    """Load a trial's checkpoint and score it on val and (once) on test, on `device` with
    the trials' `speed` (precision and layout), so val matches what the trial logged."""
    from ray import tune

    with tune.Checkpoint(where).as_directory() as folder:
        state_file = Path(folder) / STATE_FILE
        ckpt = load_checkpoint(state_file)
        config, model = model_from_checkpoint(ckpt)
        loss = config.build_loss()
        device = device or torch.device("cpu")
        if isinstance(model, Ensemble):  # cross-validated: each fold on its val, the
            # ensemble and the models one by one on test (flairseg.cv.score_folds)
            _, datasets = make_folds(data, len(model.members), config.split_seed)
            scores = score_folds(list(model.members), datasets, loss, device, speed)
        else:
            parts = {"val": data.val} | ({"test": data.test} if data.test is not None else {})
            scores = score_model(model, parts, loss, device, speed)
        if c is not None and parent_id is not None:
            c.log_artifact(parent_id, str(state_file), Artifact.BEST_DIR)
    return config, ckpt, scores


def score_group_bests(
    c: Any,
    trial_runs: list,
    search: searches.Search,
    data: Dataset,
    device: torch.device | None,
    speed: Speed,
) -> None:
    """The best trial of each model x loss group gets its test scores, for the family report.

    Selection stays on val; test only describes the group's best, once per trial.
    """
    groups: dict[tuple[str, str], Any] = {}
    pick = max if search.mode == "max" else min
    for run in trial_runs:
        tags, value = run.data.tags, run.data.metrics.get(search.metric)
        ok = schema.is_scored(tags.get(Tag.STATUS, ""))
        if not ok or value is None or not math.isfinite(value) or Tag.CHECKPOINT not in tags:
            continue
        key = (tags.get(Tag.MODEL, "?"), tags.get(Tag.LOSS, "?"))
        if key not in groups or pick(value, groups[key].data.metrics[search.metric]) == value:
            groups[key] = run
    for run in groups.values():
        if "test_iou" in run.data.metrics:
            continue
        try:
            where = run.data.tags[Tag.CHECKPOINT]
            _, _, scores = score_checkpoint(where, data, device=device, speed=speed)
        except Exception as err:  # a checkpoint that is gone must not sink the study
            print(f"warning: {run.info.run_name}: not scored on test ({err})")
            continue
        tracking.log_metrics(  # test_iou ..., and cross-validated, fold1/test_iou ...
            c, run.info.run_id, {k: v for k, v in scores.items() if "test_" in k}
        )
        c.set_tag(run.info.run_id, Tag.TEST_SCORED, "best of its model and loss")


def report_path(tune_path: str) -> str:
    """Beside the invocation's Tune folder; a temporary file when that is a URI (the copy
    that matters is the one logged on the parent run)."""
    if "://" not in tune_path:
        return f"{tune_path}/{Artifact.REPORT}"
    return str(Path(tempfile.mkdtemp(prefix="flairseg-report-")) / Artifact.REPORT)


def write_report(uri: str, experiment: str, study_name: str, parent_id: str, out: str) -> None:
    """`python -m dashboards.report` in a child process: study does not import the layer above."""
    argv = [
        sys.executable, "-m", "dashboards.report", "--experiment", experiment,
        "--study", study_name, "--mlflow-uri", uri, "--out", out, "--log-to-run", parent_id,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode == 0:
        print(f"  report: {out} (and on the parent run)")
    else:
        why = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        print(f"warning: the report was not written: {why}")

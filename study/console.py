"""What a study prints: the searches (--list), the banner, the closing summary.

Our own lines instead of Ray's boxes and tables and the INFO chatter of MLflow and
Optuna (`quiet`); the per-trial lines come from `study.callbacks`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from study import search as searches

if TYPE_CHECKING:
    from study.invocation import Opened


def quiet() -> None:
    """Our lines instead of Ray's boxes and tables, MLflow's and Optuna's INFO chatter.

    `main` calls it first, before anything imports or starts Ray, so Ray and Tune see it.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("ray", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING if name != "ray" else logging.ERROR)


def list_searches() -> None:
    """Each search in experiments/: objective, budget, fixed settings, space, laptop profile."""
    for name in searches.available():
        s = searches.load(name)
        print(f"{name}: {s.description}")
        print(
            f"  objective {s.metric} ({s.mode}); {s.trials} trials; "
            + (
                f"ASHA max {s.asha.max_epochs} epochs, grace {s.asha.grace_period}, "
                f"reduction {s.asha.reduction_factor:g}"
                if s.asha.enabled
                else f"no early stopping, at most {s.asha.max_epochs} epochs"
            )
        )
        fixed = {**s.fixed, **{m: v for m, v in s.fixed_per_model.items()}}
        if fixed:
            print(f"  fixed: {fixed}")
        for line in s.describe_space():
            print(f"  {line}")
        lap = searches.load(name, "laptop")
        if lap.raw != s.raw:
            print(
                f"  laptop profile (no GPU, no --address): {lap.trials} trials, "
                f"{lap.fixed.get('image_size', 128)} px, up to {lap.asha.max_epochs} epochs"
                + (f", epoch scale {lap.epoch_scale:g}" if lap.epoch_scale != 1 else "")
            )


def banner(opened: Opened, gpus: float) -> None:
    """What is about to run, on what, and where each store lives; before the first trial."""
    plan, record, data = opened.plan, opened.record, opened.data
    search = plan.search
    what = "resuming" if plan.resume else "running"
    budget = (
        f"ASHA: up to {search.asha.max_epochs} epochs, grace {search.asha.grace_period}, "
        f"reduction {search.asha.reduction_factor:g}"
        if search.asha.enabled
        else f"no early stopping, up to {search.asha.max_epochs} epochs"
    )
    print(
        f"{what} study {plan.study_name} (search {search.name}, profile {plan.profile}"
        + (
            ", the laptop-sized settings of the search file; --profile full for the research ones"
            if plan.profile == "laptop"
            else ""
        )
        + f"), invocation #{record.number}: {record.trials} trials\n"
        f"  data: {opened.data_dir} ({len(data.split.train)}/{len(data.split.val)}/{len(data.split.test)} patients "
        f"train/val/test, {data.image_size} px)\n"
        f"  {budget}; objective {search.metric} ({search.mode})\n"
        f"  {search.concurrency} at a time, {search.cpus:g} CPU and {gpus:g} GPU per trial\n"
        f"  MLflow: {plan.mlflow_uri} (experiment {plan.experiment}); Optuna: {plan.optuna_url}; "
        f"Tune: {record.path}",
        flush=True,
    )


def print_summary(summary: dict[str, Any], seconds: float, uri: str, experiment: str) -> str:
    """Print the invocation's summary; return its one-line digest, printed last."""
    t = summary["trials"]
    total = sum(t.values())
    stops = ", ".join(f"{n} at epoch {e}" for e, n in summary["stopped_at_epoch"].items())
    print(
        f"\nstudy {summary['study']} ({summary['search']}): {total} trials in {seconds / 60:.1f} min"
    )
    print(
        f"  completed {t.get('completed', 0)}, stopped by ASHA {t.get('stopped', 0)}"
        + (f" ({stops})" if stops else "")
        + f", failed {t.get('failed', 0)}"
        + (f", killed {t['killed']}" if t.get("killed") else "")
    )
    spent, without = summary["epochs_spent"], summary["epochs_without_stopping"]
    share = f" ({100 * spent / without:.0f} %)" if without else ""
    print(f"  epochs spent {spent} of {without} without early stopping{share}")
    if "best_config" not in summary:
        print("  no trial finished with a score")
        return f"no trial of study {summary['study']} succeeded"
    cfg = summary["best_config"]
    print(
        f"  best of the study ({summary['study_trials']} trials so far): {summary['best_name']}, "
        f"{summary['best_epochs']} epochs"
    )
    print("  best config: " + " ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    for part in ("val", "test"):
        if f"{part}_iou" in summary:
            print(
                f"  {part:<4} iou {summary[f'{part}_iou']:.4f}  dice {summary[f'{part}_dice']:.4f}  "
                f"pixel_acc {summary[f'{part}_pixel_accuracy']:.4f}  "
                f"mean_acc {summary[f'{part}_mean_accuracy']:.4f}  "
                f"volume_dice {summary[f'{part}_volume_dice']:.4f}"
            )
    print(f"  MLflow: mlflow ui --backend-store-uri {uri}  (experiment {experiment})")
    line = f"best {summary['objective']} {summary.get(summary['objective'], float('nan')):.4f} (trial #{summary['best_trial']})"
    if "test_iou" in summary:
        line += f", test iou {summary['test_iou']:.4f}"
    return line + f"; {total} trials, {spent}/{without} epochs"

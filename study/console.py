"""What a study prints: the searches (--list), the banner, the closing summary.

Our own lines instead of Ray's boxes and tables and the INFO chatter of MLflow and
Optuna (`quiet`); the per-trial lines come from `study.progress`.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flairseg.cvkeys import single_key, std_key
from study import search as searches
from study import secrets, webhook

if TYPE_CHECKING:
    from study.invocation import Opened
    from study.plan import Plan


def quiet() -> None:
    """Our lines instead of Ray's boxes and tables, MLflow's and Optuna's INFO chatter.

    `main` calls it first, before anything imports or starts Ray, so Ray and Tune see it.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("ray", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING if name != "ray" else logging.ERROR)
    # MLflow's SQL store logs each failed query with its traceback, then raises it to us:
    # the study says it in its own line (a full disk: study.diskfull)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def list_searches() -> None:
    """Each search in experiments/: objective, budget, fixed settings, space, laptop profile."""
    for name in searches.available():
        s = searches.load(name)
        print(f"{name}: {s.description}")
        cost = f", cost {s.cost.metric} (min)" if s.cost else ""
        print(
            f"  objective {s.metric} ({s.mode}){cost}; {s.trials} trials; "
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
            # a grid: the epochs each run trains once scaled and capped, not the cap
            epochs = (
                "runs of " + ", ".join(str(lap.config_for(g).epochs) for g in lap.grid) + " epochs"
                if lap.grid
                else f"up to {lap.asha.max_epochs} epochs"
            )
            print(
                f"  laptop profile (no GPU, no --address): {lap.trials} trials, "
                f"{lap.fixed.get('image_size', 128)} px, {epochs}"
                + (f" (epoch scale {lap.epoch_scale:g})" if lap.epoch_scale != 1 else "")
            )


def headline(plan: Plan) -> None:
    """The run's first line: the study, its search and profile. Printed once the study's lock
    is held, before the synthetic data set is generated and Ray starts."""
    what = "resuming" if plan.resume else "running"
    print(
        f"{what} study {plan.study_name} (search {plan.search.name}, profile {plan.profile}"
        + (
            ", the laptop-sized settings of the search file; --profile full for the research ones"
            if plan.profile == "laptop"
            else ""
        )
        + ")",
        flush=True,
    )


def banner(opened: Opened, gpus: float) -> None:
    """What is about to run, on what, and where each store lives; before the first trial."""
    plan, record, data = opened.plan, opened.record, opened.data
    search = plan.search
    budget = (
        f"ASHA: up to {search.asha.max_epochs} epochs, grace {search.asha.grace_period}, "
        f"reduction {search.asha.reduction_factor:g}"
        if search.asha.enabled
        else f"no early stopping, up to {search.asha.max_epochs} epochs"
    )
    if search.time_budget:
        from study import budget as clock

        budget += (
            f"; time budget {clock.describe(search.time_budget)} (the close-out keeps "
            f"{clock.describe(clock.reserve(search.time_budget))})"
        )
    print(
        f"{_adds(opened)}\n"
        f"  data: {opened.data_dir} ({_patients(data, search.folds)}, {data.image_size} px)\n"
        f"  {budget}; objective {search.metric} ({search.mode})"
        + (f", cost {search.cost.metric} (min)" if search.cost else "")
        + "\n"
        f"  {search.concurrency} at a time, {search.cpus:g} CPU and {gpus:g} GPU per trial\n"
        f"  MLflow: {plan.mlflow_uri} (experiment {plan.experiment}); Optuna: {plan.optuna_url}; "
        f"Tune: {record.path}"
        + (f"\n  notify: {webhook.shown(plan.notify)} when it ends" if plan.notify else ""),
        flush=True,
    )
    print(live_view(plan.optuna_url), flush=True)


def _adds(opened: Opened) -> str:
    """`invocation #2 adds 12 trials to a study of 12 (best so far: ...)`: what this
    invocation runs against what the study already holds (its ended trials)."""
    import optuna

    from study import ledger

    state = optuna.trial.TrialState
    record, metric = opened.record, opened.plan.search.metric
    ended = len(
        opened.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.FAIL))
    )
    best = ledger.best_trial(opened.study)
    so_far = f" (best so far: trial #{best.number}, {metric} {best.value:.4f})" if best else ""
    if opened.plan.resume:
        return (
            f"invocation #{record.number} resumed: {record.trials} trials, "
            f"in a study of {ended} ended so far{so_far}"
        )
    if not ended and record.number == 1:
        return f"invocation #1: {record.trials} trials, a new study"
    return f"invocation #{record.number} adds {record.trials} trials to a study of {ended}{so_far}"


def live_view(optuna_url: str) -> str:
    """The one line that says how to watch the study live (optuna-dashboard on its Optuna
    storage), runnable as written: this environment's `optuna-dashboard`, or how to install
    it. A URL whose password was taken out is named by its variable, never with it."""
    if secrets.had_password(optuna_url):
        url = '"$' + secrets.ENV_OF["--optuna-storage"] + '"'
    else:
        url = shlex.quote(secrets.scrub(optuna_url))
    bin_dir = Path(sys.executable).parent
    dashboard = f"{_runnable(bin_dir / 'optuna-dashboard')} {url}"
    if (bin_dir / "optuna-dashboard").exists():
        return f"  live view: {dashboard}  (then open http://127.0.0.1:8080)"
    return (
        f"  live view: optuna-dashboard is not installed here: "
        f"{_runnable(bin_dir / 'pip')} install {_live_extra()}, then {dashboard}"
    )


def _runnable(path: Path) -> str:
    """`path` as a command typed in the current folder (study.commands)."""
    from study.commands import runnable

    return runnable(path)


def _live_extra() -> str:
    """What to install for the live view: this project's `live` extra where its source is
    (an editable install), else optuna-dashboard itself."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        return "'optuna-dashboard>=0.21'"
    where = "." if root == Path.cwd().resolve() else str(root)
    return f"-e {shlex.quote(where + '[live]')}"


def _scores(summary: dict[str, Any], part: str) -> str:
    """`iou 0.5123  dice ...` of a part; `± sd` after each where the summary has the spread.
    `part` is val, test, or test_single (the fold models scored one by one)."""
    out = []
    for name, metric in (
        ("iou", "iou"),
        ("dice", "dice"),
        ("pixel_acc", "pixel_accuracy"),
        ("mean_acc", "mean_accuracy"),
        ("volume_dice", "volume_dice"),
    ):
        key = f"test_{metric}_single" if part == single_key("test") else f"{part}_{metric}"
        text = f"{name} {summary[key]:.4f}"
        if std_key(key) in summary:
            text += f" ± {summary[std_key(key)]:.4f}"
        out.append(text)
    return "  ".join(out)


def _patients(data: Any, folds: int | None) -> str:
    """`4/2/2 patients train/val/test`, or cross-validated `6 patients in 3 folds, 2 test`."""
    split = data.split
    if folds:
        pool = len(split.train) + len(split.val)
        return (
            f"{pool} patients in {folds} folds, each trial trains one model per fold; "
            f"{len(split.test)} test"
        )
    return f"{len(split.train)}/{len(split.val)}/{len(split.test)} patients train/val/test"


def print_summary(summary: dict[str, Any], seconds: float, uri: str, experiment: str) -> str:
    """Print the invocation's summary; return its one-line digest, printed last. Counts and
    epochs are this invocation's; the best trial and what mattered are the study's."""
    mine = _invocation_counts(summary, seconds)
    study = f"the study ({summary['study_trials']} trials so far)"
    if "importance" in summary:  # what drove the objective and the epochs (study.importance)
        from study.importance import line as mattered

        print(f"  {study}: " + mattered(summary["importance"]))
    if "best_config" not in summary:
        print("  no trial finished with a score")
        return f"no trial of study {summary['study']} succeeded; {mine}"
    cfg = summary["best_config"]
    where = "this invocation" if summary.get("best_this_invocation") else "an earlier invocation"
    print(
        f"  {'answer' if summary.get('front') else 'best'} of {study}: {summary['best_name']}, "
        f"{summary['best_epochs']} epochs, from {where}"
    )
    print("  best config: " + " ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    folds = summary.get("folds")
    if not folds:
        for part in ("val", "test"):
            if f"{part}_iou" in summary:
                print(f"  {part:<4} " + _scores(summary, part))
    else:
        labels = {
            "val": f"val, mean of the {folds} folds (± sd)",
            "test": f"test, the ensemble of the {folds} fold models",
            single_key("test"): "test, one fold model (mean ± sd)",
        }
        for part, label in labels.items():
            first = single_key("test_iou") if part == single_key("test") else f"{part}_iou"
            if first in summary:
                print(f"  {label}:\n    " + _scores(summary, part))
    if summary.get("front"):  # a second objective (study.front)
        from study.front import lines as front_lines

        print("  " + "\n  ".join(front_lines(summary["front"])))
    else:
        print("  " + "\n  ".join(answer_lines(summary)))
    if summary.get("registry"):
        print(f"  model registry: {summary['registry']}")
    print(f"  MLflow: {mlflow_hint(uri, experiment)}")
    value = summary.get(summary["objective"], float("nan"))
    which = "confirmed best" if summary.get("best_confirmed") else "best"
    which = "the front's answer" if summary.get("front") else which
    line = (
        f"{which} of the study: {summary['objective']} {value:.4f} (trial #{summary['best_trial']}"
    )
    line += f", {where})"
    if "test_iou" in summary:
        line += f", test iou {summary['test_iou']:.4f}"
        if folds:
            line += f" (ensemble of {folds} folds)"
    return f"{line}; {mine}"


def answer_lines(summary: dict[str, Any]) -> list[str]:
    """How sure the answer is: the confirmed winner against each other finalist, or a
    plain word that it is unconfirmed."""
    from study import compare

    made = summary.get("confirmation")
    if not made or made.get("winner") is None:
        return [
            "answer unconfirmed: the search's best, as ASHA and one "
            + ("set of folds" if summary.get("folds") else "seed")
            + " saw it (confirmation off, or no finalist confirmed)"
        ]
    lines = compare.lines(made)
    if made.get("left_out"):
        lines.append(f"  left out (a confirmation trial failed): {made['left_out']}")
    return lines


def _invocation_counts(summary: dict[str, Any], seconds: float) -> str:
    """Print the summary's head and this invocation's trials and epochs; return the last
    line's part about them: `this invocation: 12 trials, 151/240 epochs`."""
    t = summary["trials"]
    total = sum(t.values())
    stops = ", ".join(f"{n} at epoch {e}" for e, n in summary["stopped_at_epoch"].items())
    print(
        f"\nstudy {summary['study']} (search {summary['search']}), invocation "
        f"#{summary['invocation']}: {total} trials in {seconds / 60:.1f} min"
    )
    print(
        f"  this invocation: completed {t.get('completed', 0)}, "
        f"stopped by ASHA {t.get('stopped', 0)}"
        + (f" ({stops})" if stops else "")
        + (f", stopped by the time budget {t['budget']}" if t.get("budget") else "")
        + f", failed {t.get('failed', 0)}"
        + (f", killed {t['killed']}" if t.get("killed") else "")
    )
    spent, without = summary["epochs_spent"], summary["epochs_without_stopping"]
    share = f" ({100 * spent / without:.0f} %)" if without else ""
    print(f"  this invocation: epochs spent {spent} of {without} without early stopping{share}")
    if summary.get("time_budget"):
        from study.budget import summary_line

        print("  " + summary_line(summary["time_budget"]))
    return f"this invocation: {total} trials, {spent}/{without} epochs"


def mlflow_hint(uri: str, experiment: str) -> str:
    """How to look at the study in the MLflow UI, runnable as written: this environment's
    `mlflow ui` on a local store (a server is already a UI), and the address of the
    experiment's runs (`workflowType=machine_learning`: MLflow 3's UI opens an experiment on
    its GenAI traces otherwise)."""
    from study import schema, tracking

    try:  # the address of the runs needs the experiment's id: a store that does not answer
        # now only shortens the hint, it never fails the summary of a study that trained
        with tracking.quick_failures():
            exp = schema.client(uri).get_experiment_by_name(experiment)
    except Exception:
        exp = None
    runs = f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" if exp else ""
    if uri.startswith(("http://", "https://")):
        return f"open {secrets.scrub(uri).rstrip('/')}{runs}  (experiment {experiment})"
    mlflow = _runnable(Path(sys.executable).parent / "mlflow")
    url = shlex.quote(secrets.scrub(uri))
    return f"{mlflow} ui --backend-store-uri {url}, then open http://127.0.0.1:5000{runs}"

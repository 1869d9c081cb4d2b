"""Running the confirmation stage (study.confirm) as Ray Tune trials, and logging its answer.

The finalists' retraining is a Tune run of its own beside the search's (`STUDY/run-N-confirm`):
parallel, placed on GPUs like any trial, resumable after a kill (`--resume` restores it),
each trial a child run of the invocation's parent in MLflow with role `confirmation` and
the tag `confirms` = the search trial it retrains. No ASHA: every finalist runs its full
budget. Its answer (study.compare's record) goes on the parent run as `comparison.json`,
with the winner's confirmed objective as `confirmed_<objective>` and the tag `answer`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from study import budget, confirm, tracking
from study.callbacks import StudyCallback, for_invocation
from study.schema import Artifact, Role, Tag
from study.trainable import KEPT_FROM
from study.trial_names import SearchTrials, say
from study.tuner import fit


class ConfirmTrials(SearchTrials):
    """The confirmation's trials: each a case (a finalist and its replica), its MLflow run
    found by (trial, replica) among the invocation's own."""

    role = Role.CONFIRMATION

    def __init__(self, cases: list[dict[str, Any]], parent_id: str, folds: int | None) -> None:
        self.cases = cases
        self.parent_id = parent_id
        self.folds = folds

    def config_of(self, trial) -> dict[str, Any]:
        return self.cases[int(trial.config["case"])]

    def key_of(self, trial) -> Any:
        case = self.config_of(trial)
        return f"{case['optuna_trial']}.{case['replica']}"

    def key_of_run(self, run) -> Any:
        tags = run.data.tags
        if tags.get(Tag.PARENT) != self.parent_id:
            return None  # another invocation's confirmation
        return f"{tags.get(Tag.CONFIRMS)}.{tags.get(Tag.REPLICA)}"

    def identity_tags(self, trial) -> dict[str, str]:
        case = self.config_of(trial)
        return {Tag.CONFIRMS: str(case["optuna_trial"]), Tag.REPLICA: str(case["replica"])}

    def result_tags(self, result: dict) -> dict[str, str]:
        if result.get(KEPT_FROM):  # trained nothing (study.confirm)
            return {Tag.KEPT: result[KEPT_FROM]}
        return {}

    def label(self, trial) -> str:
        case = self.config_of(trial)
        how = f"{self.folds} folds" if self.folds else f"seed {case['flairseg']['seed']}"
        return f"confirm #{case['optuna_trial']} ({how})"


class ConfirmCallback(StudyCallback):
    """The confirmation's callback before the split (study.callbacks.StudyCallback): kept
    only so that the Tune state of a confirmation started before it still loads."""

    def names(self) -> SearchTrials:
        return ConfirmTrials(self.cases, self.parent_id, getattr(self, "folds", None))


def path_of(search_path: str) -> str:
    return f"{search_path}-confirm"


def run(opened: Any, gpus: float) -> dict[str, Any] | None | str:
    """The confirmation stage of an invocation whose search ended: its record, None when
    the study does not confirm (said, and tagged), "interrupted" when a Ctrl+C stopped it."""
    plan = opened.plan
    search = plan.search
    c = opened.client
    if search.confirm == 0:
        c.set_tag(opened.parent_id, Tag.CONFIRMED, "false")
        return None
    finalists = confirm.choose(opened.study, search, search.confirm)
    if not finalists:
        return None
    trial_runs = tracking.study_runs(c, plan.experiment_id, plan.study_name, role=Role.TRIAL)
    kept = confirm.kept_checkpoints(finalists, trial_runs)
    cases = confirm.cases(finalists, search, kept)
    if not fits_the_budget(opened, len(cases) - len(kept)):
        return None
    how = f"its {search.folds} folds" if search.folds else f"{search.confirm_seeds} seeds"
    say(
        f"confirming the top {len(finalists)} of the study, each to its full budget with {how} "
        f"({len(cases) - len(kept)} trials to train, no early stopping):"
    )
    mine = "its folds are" if search.folds else "its own seed is"
    for f in finalists:
        done = f"; its search trial ran the full budget: {mine} kept" if f.trial in kept else ""
        say(
            f"  {f.label}: {plan.search.metric} {f.value:.4f} at epoch {f.rung} of "
            f"{f.config['epochs']} (standing {f.standing:.2f} among the trials there){done}"
        )
    names = ConfirmTrials(cases, opened.parent_id, search.folds)
    callbacks = for_invocation(opened, names, total=len(cases))
    tuner = _tuner(opened, cases, callbacks, gpus)
    started = time.monotonic()
    _, stopped = fit(tuner)
    if stopped:
        return "interrupted"
    results = _results(tuner, cases)
    whole = len(results) == len(cases) and all(_whole(r, cases) for r in results)
    if budget.ended_phase("confirm") and not whole:
        say("the time budget ended the confirmation: the answer is the search's, unconfirmed")
        c.set_tag(opened.parent_id, Tag.CONFIRMED, "false")
        return None
    if len(results) < len(cases):
        return "interrupted"
    made = confirm.record(finalists, results, search)
    made["seconds"] = round(time.monotonic() - started, 1)
    # the finalists whose search trial stood for a replica, as the trials found them
    made["kept"] = sorted({r["optuna_trial"] for r in results if r["metrics"].get(KEPT_FROM)})
    _log(opened, made)
    return made


def fits_the_budget(opened: Any, to_train: int) -> bool:
    """Whether the confirmation's retraining fits in what a time budget left (at the
    search's median epoch); if not, it is skipped and said (the answer is unconfirmed)."""
    clock = budget.clock()
    search = opened.plan.search
    epoch = clock.epoch() if clock else None
    if clock is None or epoch is None or to_train == 0:
        return True
    need = math.ceil(to_train / search.concurrency) * search.asha.max_epochs * epoch
    if need <= clock.left():
        return True
    say(
        f"the time budget leaves {budget.describe(max(clock.left(), 0))} before the close-out, "
        f"the confirmation needs about {budget.describe(need)}: skipped, the answer is the "
        "search's, unconfirmed"
    )
    opened.client.set_tag(opened.parent_id, Tag.CONFIRMED, "false")
    return False


def _tuner(opened: Any, cases: list[dict[str, Any]], callbacks: list, gpus: float) -> Any:
    from ray import tune

    from study.searcher import BudgetStopper
    from study.trainable import run_confirmation

    search = opened.plan.search
    path = path_of(opened.record.path)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_confirmation,
            data=opened.data,
            cases=cases,
            threads=max(1, int(search.cpus)),
            speed=opened.plan.speed,
            folds=search.folds,
        ),
        {"cpu": search.cpus, "gpu": gpus},
    )
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    storage_path, name = path.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space={"case": tune.grid_search(list(range(len(cases))))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=search.concurrency,
            reuse_actors=True,
            trial_dirname_creator=lambda t: f"confirm-{int(t.config['case']):03d}-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0),
            stop=BudgetStopper(),  # the confirmation's share of a time budget
        ),
    )


def _whole(result: dict[str, Any], cases: list[dict[str, Any]]) -> bool:
    """Whether a confirmation trial trained its full budget (a time budget may cut one)."""
    case = next(c for c in cases if (c["optuna_trial"], c["replica"]) == (
        result["optuna_trial"], result["replica"]))  # fmt: skip
    epochs = int(case["flairseg"]["epochs"])
    return result["checkpoint"] is not None and result["metrics"].get("epoch", 0) >= epochs


def _results(tuner: Any, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ended confirmation trial: its case, last metrics, checkpoint and patients."""
    out = []
    for result in tuner.get_results():
        case = int(result.config["case"])
        ok = result.error is None and result.checkpoint is not None
        patients = None
        if ok:
            with result.checkpoint.as_directory() as folder:
                patients = confirm.read_patients(folder)
        out.append(
            {
                "optuna_trial": cases[case]["optuna_trial"],
                "replica": cases[case]["replica"],
                "metrics": dict(result.metrics or {}),
                "checkpoint": result.checkpoint.path if ok else None,
                "patients": patients,
            }
        )
    return out


def _log(opened: Any, made: dict[str, Any]) -> None:
    """The record on the parent run: the artifact, the winner's metric, the answer tags."""
    c, parent = opened.client, opened.parent_id
    tracking.log_json(c, parent, made, Artifact.COMPARISON)
    c.set_tag(parent, Tag.CONFIRMED, "true")
    c.set_tag(parent, Tag.ANSWER, confirm.answer_line(made)[:5000])
    winner = next((f for f in made["finalists"] if f["trial"] == made.get("winner")), None)
    if winner is not None:
        metric = opened.plan.search.metric
        tracking.log_metrics(c, parent, {f"confirmed_{metric}": winner["objective"]})

"""What the driver's Tune callbacks (study.callbacks) share: how a Tune run's trials are
named and found again, how a trial ended, and the console's line printer.

`SearchTrials` names the search's trials by their Optuna number; the confirmation names its
own (study.confirming.ConfirmTrials). One such object is handed to each callback of a Tune
run, so the MLflow runs and the console's lines call a trial the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flairseg.config import TrainConfig
from study import budget, schema, tracking
from study.schema import Role, Status, Tag

# what a trial config holds besides the sampled values
CONFIG_KEYS = ("flairseg", "optuna_trial", "resume_from", "kept", "replica")


def say(line: str) -> None:
    print(line, flush=True)


class SearchTrials:
    """The search's trials: a trial's config is Tune's, its key its Optuna number."""

    role = Role.TRIAL  # what their MLflow runs are

    def config_of(self, trial) -> dict[str, Any]:
        """The trial's config: `flairseg` (its TrainConfig), `optuna_trial`, sampled values."""
        return trial.config

    def key_of(self, trial) -> Any:
        """What its MLflow run is found by (a search trial: its Optuna number)."""
        return int(self.config_of(trial)["optuna_trial"])

    def key_of_run(self, run) -> Any:
        """The key of an MLflow run of this study and role (None: not one of these trials)."""
        return int(run.data.tags.get(Tag.OPTUNA_TRIAL, -1))

    def identity_tags(self, trial) -> dict[str, str]:
        """The tags that say which trial a run is."""
        return {Tag.OPTUNA_TRIAL: str(self.config_of(trial)["optuna_trial"])}

    def result_tags(self, result: dict) -> dict[str, str]:
        """Tags a trial's report sets on its run besides the epoch's (none for the search)."""
        return {}

    def label(self, trial) -> str:
        """The trial's name in MLflow and on the console."""
        given = self.config_of(trial)
        config = TrainConfig.from_dict(given["flairseg"])
        sampled = {k: v for k, v in given.items() if k not in CONFIG_KEYS}
        return tracking.run_name(int(given["optuna_trial"]), config, sampled)


def ending(trial, config: dict[str, Any]) -> tuple[str, str, int]:
    """How a trial that ended without error ended: its status, the console's words for it,
    its last epoch (`config`: the trial's, as its names' `config_of` gives it)."""
    result = trial.last_result or {}
    epoch = int(result.get("epoch", 0))
    planned = int(result.get("planned_epochs") or config["flairseg"]["epochs"])
    if epoch >= planned:
        return Status.COMPLETED, f"completed {epoch} epochs", epoch
    if budget.cut():  # one cut before its first epoch is recorded as never started
        status = schema.budget_status(epoch) if epoch else Status.NOT_STARTED
        return status, f"stopped by the time budget at epoch {epoch}/{planned}", epoch
    return schema.stopped_status(epoch), f"stopped by ASHA at epoch {epoch}/{planned}", epoch


def unrecorded(trial, done, live: set[str], names: SearchTrials) -> bool:
    """Whether a time budget's end stopped `trial` without a word (Tune's `stop_all` tells
    nobody): one this driver ran (`live`) that no hook recorded yet (`done`: keys), to be
    recorded at the experiment's end, stopped by the budget at its last epoch."""
    seen = names.key_of(trial) in done or trial.trial_id not in live
    return trial.status == "TERMINATED" and not seen


def error_line(trial) -> str:
    """The last line of the trial's traceback: `DivergedError: train loss became nan ...`."""
    path = trial.error_file
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "unknown error (see the trial's error file)"
    last = lines[-1]
    for prefix in ("flairseg.engine.", "flairseg.errors.", "builtins."):
        last = last.replace(prefix, "")
    return last

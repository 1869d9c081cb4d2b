"""Ray's OptunaSearch, made safe for a driver that was killed (SIGKILL, lost node, OOM).

Ray saves its experiment state every few seconds, while Optuna writes each `ask` to
its database at once. A driver killed in between leaves an Optuna trial RUNNING that
the restored Tune state does not know. On `--resume`, this searcher adopts such an
orphan instead of asking Optuna for a new trial: the orphan gets its own parameters
back, and the trial resumes from its last checkpoint on disk (found by the trial folder
name `trial-NNNN-*`), so the invocation runs what it planned and nothing more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from study import adapters


class StudySearch(OptunaSearch):
    def __init__(self, *args: Any, experiment_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._experiment_path = experiment_path

    def suggest(self, trial_id: str) -> dict | None:
        resume_from = None
        trials = adapters.searcher_trials(self)
        if trial_id not in trials:
            orphan = self._orphan()
            if orphan is not None:
                trials[trial_id] = orphan
                resume_from = latest_checkpoint(self._experiment_path, orphan.number)
        config = super().suggest(trial_id)
        if config is not None and resume_from is not None:
            config["resume_from"] = resume_from
        return config

    def _orphan(self):
        import optuna

        known = {t.number for t in adapters.searcher_trials(self).values()}
        study = adapters.searcher_study(self)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for frozen in running:
            if frozen.number not in known:
                return adapters.running_trial(study, frozen)
        return None


def latest_checkpoint(experiment_path: str, number: int) -> str | None:
    """The newest `checkpoint_*` folder of any trial folder of Optuna trial `number`."""
    root = Path(experiment_path)
    if not root.is_dir():  # a remote URI: the orphan starts again from epoch 1
        return None
    found = sorted(
        (p for d in root.glob(f"trial-{number:04d}-*") for p in d.glob("checkpoint_*")),
        key=lambda p: p.name,
    )
    complete = [p for p in found if (p / "state.pt").exists()]
    return str(complete[-1]) if complete else None

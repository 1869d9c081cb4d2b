"""The driver's Tune callbacks for an invocation, built by `for_invocation`, in this order:

- `study.trial_runs.TrialRuns`: each trial's MLflow run, through the outbox;
- `study.progress.Progress`: the console's progress lines;
- `FullDisk`: a trial that found its disk full pauses the study (study.diskfull).

Tune calls them in that order at each event: a trial's run is ended before its line says
so. `StudyCallback` is the one callback they were before, kept for the invocations whose
Tune state holds it.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from study import diskfull, outbox, stops
from study.progress import STATUS_EVERY_S, Progress
from study.trial_names import SearchTrials
from study.trial_runs import TrialRuns

NOTES_EVERY_S = 2.0  # how often the driver asks whether a trial found its disk full


class FullDisk(Callback):
    """A trial that found no room for its checkpoint pauses the study (study.diskfull)."""

    def __init__(self) -> None:
        self._notes = None
        self._notes_asked = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_notes": None}  # a Ray handle: found again in `setup`

    def setup(self, **info: Any) -> None:
        self._notes, self._notes_asked = diskfull.start(), 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self._notes is None or now - self._notes_asked < NOTES_EVERY_S:
            return
        self._notes_asked = now
        said = diskfull.heard(self._notes)
        if said:
            diskfull.release()  # room for Tune to save its state whole, and for the stores
            stops.pause(f"({said})", diskfull.EXIT_NO_SPACE)


def for_invocation(
    opened: Any, names: SearchTrials | None = None, total: int | None = None
) -> list[Callback]:
    """The Tune callbacks that log each trial as a child of the invocation's parent run and
    say its progress (`names`: how the trials are named, the search's by default; `total`:
    how many trials there are, the invocation's by default)."""
    from study import datasets, ledger

    plan = opened.plan
    names = names or SearchTrials()
    runs = TrialRuns(
        names,
        uri=plan.mlflow_uri,
        experiment_id=plan.experiment_id,
        parent_id=opened.parent_id,
        study=plan.study_name,
        search=plan.search.name,
        fingerprint=opened.data.fingerprint,
        folds=plan.search.folds,
        outbox_dir=str(outbox.folder_for(opened.record.path)),
        datasets=datasets.specs(opened.data_dir, opened.data, plan.search.folds),
    )
    progress = Progress(
        names,
        metric=plan.search.metric,
        mode=plan.search.mode,
        total=opened.record.trials if total is None else total,
        status_every=plan.status_every,
        study_best=getattr(ledger.best_trial(opened.study), "value", None),
    )
    return [runs, progress, FullDisk()]


class StudyCallback(Callback):
    """The one callback that did the three callbacks' work before they were split; never
    built now, only unpickled. Tune saves a Tuner's callbacks in its state (`tuner.pkl`) and
    its restore runs those, not new ones: an invocation started before the split holds a
    StudyCallback there (its confirmation a study.confirming.ConfirmCallback), so this name
    stays for its `--resume`. Unpickled, it builds the three from the settings it held
    (those a callback pickled before a setting existed lacks take their old defaults) and
    hands each hook to them in their order."""

    def names(self) -> SearchTrials:
        return SearchTrials()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        names, get = self.names(), state.get
        runs = TrialRuns(
            names,
            uri=state["uri"],
            experiment_id=state["experiment_id"],
            parent_id=state["parent_id"],
            study=state["study"],
            search=state["search"],
            fingerprint=state["fingerprint"],
            folds=get("folds"),
            outbox_dir=get("outbox_dir"),
            datasets=get("datasets"),
        )
        runs._outbox = get("_outbox")  # None unless pickled after its first write
        progress = Progress(
            names,
            metric=state["metric"],
            mode=state["mode"],
            total=state["total"],
            status_every=get("status_every", STATUS_EVERY_S),
            study_best=get("study_best"),
        )
        self._parts = [runs, progress, FullDisk()]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_parts"}

    def setup(self, **info: Any) -> None:
        for part in self._parts:
            part.setup(**info)

    def on_trial_start(self, *args: Any, **info: Any) -> None:
        for part in self._parts:
            part.on_trial_start(*args, **info)

    def on_trial_result(self, *args: Any, **info: Any) -> None:
        for part in self._parts:
            part.on_trial_result(*args, **info)

    def on_trial_complete(self, *args: Any, **info: Any) -> None:
        for part in self._parts:
            part.on_trial_complete(*args, **info)

    def on_trial_error(self, *args: Any, **info: Any) -> None:
        for part in self._parts:
            part.on_trial_error(*args, **info)

    def on_step_end(self, *args: Any, **info: Any) -> None:
        for part in self._parts:
            part.on_step_end(*args, **info)

    def on_experiment_end(self, *args: Any, **info: Any) -> None:
        for part in self._parts:
            part.on_experiment_end(*args, **info)

"""The Tune callback on the driver: trial runs in MLflow, and one progress line per event.

It replaces Ray's `MLflowLoggerCallback` (which opened a second run for a resumed
trial and left the first RUNNING) and Ray's status table (printed every few seconds).
It is pickled with the Tuner's state, so it keeps no client or open handle across a
pickle: a restored copy reconnects and finds its runs again in MLflow.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from flairseg.config import TrainConfig
from flairseg.evolution import EVOLUTION_FILE, Evolution
from study import budget, diskfull, outbox, schema, stops, tracking
from study.outbox import Outbox
from study.schema import Artifact, Param, Role, Status, Tag

STATUS_EVERY_S = 30.0
NOTES_EVERY_S = 2.0  # how often the driver asks whether a trial found its disk full
CONFIG_KEYS = (
    "flairseg",
    "optuna_trial",
    "resume_from",
    "kept",
    "replica",
)  # what a trial config holds besides
# the sampled values


def say(line: str) -> None:
    print(line, flush=True)


class StudyCallback(Callback):
    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_id: str,
        study: str,
        search: str,
        fingerprint: str,
        metric: str,
        mode: str,
        total: int,
        status_every: float = STATUS_EVERY_S,
        folds: int | None = None,
        outbox_dir: str | None = None,
        datasets: list[dict[str, Any]] | None = None,
        study_best: float | None = None,
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.study = study
        self.search = search
        self.fingerprint = fingerprint
        self.metric = metric
        self.mode = mode
        self.total = total
        self.status_every = status_every
        self.folds = folds  # K of a cross-validated study: tagged on each trial run
        self.outbox_dir = outbox_dir  # where writes wait while the server is away
        self.datasets = datasets or []  # study.datasets specs: each trial run's inputs
        self.study_best = study_best  # the study's best objective before this invocation
        self._outbox: Outbox | None = None
        self._client = None
        self._runs: dict[int, str] = {}
        self._last_step: dict[str, int] = {}
        self._started = time.monotonic()
        self._last_status = time.monotonic()
        self._done: dict[int, tuple[str, float | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = state["_notes"] = None  # Ray handles: found again in `setup`
        return state  # the outbox pickles without its client, its journal is on disk

    @property
    def client(self):
        """For reads (the runs a resumed invocation has); writes go through `writes`."""
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    @property
    def writes(self) -> Outbox:
        """Every MLflow write: to the server, or kept while it is away (study.outbox)."""
        if getattr(self, "_outbox", None) is None:  # a callback pickled before outboxes
            folder = getattr(self, "outbox_dir", None) or outbox.cache_folder(self.parent_id)
            self._outbox = Outbox(self.uri, folder)
        return self._outbox

    # -- Tune hooks ---------------------------------------------------------------

    role = Role.TRIAL  # what its runs are: the search's trials

    def config_of(self, trial) -> dict[str, Any]:
        """The trial's config: `flairseg` (its TrainConfig), `optuna_trial`, sampled values."""
        return trial.config

    def key_of(self, trial) -> Any:
        """What its MLflow run is found by (a search trial: its Optuna number)."""
        return int(self.config_of(trial)["optuna_trial"])

    def key_of_run(self, run) -> Any:
        return int(run.data.tags.get(Tag.OPTUNA_TRIAL, -1))

    def identity_tags(self, trial) -> dict[str, str]:
        """The tags that say which trial a run is."""
        return {Tag.OPTUNA_TRIAL: str(self.config_of(trial)["optuna_trial"])}

    def setup(self, **info: Any) -> None:
        """Find the runs this study already has (a resumed invocation keeps logging there)."""
        self._started = self._last_status = time.monotonic()
        self._notes, self._notes_asked = diskfull.start(), 0.0  # a trial's full disk
        for run in schema.study_runs(self.client, self.experiment_id, self.study, role=self.role):
            key = self.key_of_run(run)
            if key is None:
                continue
            self._runs[key] = run.info.run_id
            epochs = run.data.tags.get(Tag.EPOCHS_LOGGED)
            self._last_step[run.info.run_id] = int(epochs) if epochs else 0

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.__dict__.setdefault("_live", set()).add(trial.trial_id)  # ran in this driver
        key = self.key_of(trial)
        config = TrainConfig.from_dict(self.config_of(trial)["flairseg"])
        run_id = self._runs.get(key)
        if run_id is not None:  # resumed: the same run carries on
            self.writes.update_run(run_id, status="RUNNING")
            self.writes.set_tag(run_id, Tag.STATUS, Status.RUNNING)
            return
        sampled = {k: v for k, v in self.config_of(trial).items() if k not in CONFIG_KEYS}
        tags = {
            Tag.PARENT: self.parent_id,
            Tag.STUDY: self.study,
            Tag.SEARCH: self.search,
            Tag.ROLE: self.role,
            **self.identity_tags(trial),
            Tag.RAY_TRIAL_ID: trial.trial_id,
            Tag.MODEL: config.model,
            Tag.LOSS: config.loss,
            Tag.DATA_FINGERPRINT: self.fingerprint,
            Tag.STATUS: Status.RUNNING,
            Tag.PLANNED_EPOCHS: str(config.epochs),
        }
        if getattr(self, "folds", None):  # a callback pickled before folds existed has none
            tags[Tag.FOLDS] = str(self.folds)
        run_id = self.writes.create_run(self.experiment_id, run_name=self._label(trial), tags=tags)
        from mlflow.entities import Param as MlflowParam

        params = [MlflowParam(k, str(v)) for k, v in tracking.trial_params(config).items()]
        params += [MlflowParam(Param.SAMPLED_PREFIX + k, str(v)) for k, v in sampled.items()]
        self.writes.log_batch(run_id, params=params)
        if getattr(self, "datasets", None):  # a callback pickled before datasets has none
            self.writes.log_inputs(run_id, self.datasets)
        self._runs[key] = run_id
        self._last_step[run_id] = 0

    def on_trial_result(
        self, iteration: int, trials: list, trial, result: dict, **info: Any
    ) -> None:
        run_id = self._run_of(trial)
        if run_id is None:
            return
        if "resumed_history" in result:  # the first report of a trial resumed from a checkpoint
            history = json.loads(result["resumed_history"])
            for earlier in history:
                self._log_epoch(run_id, earlier)  # epochs whose logging a killed driver missed
            resumed_from = int(history[-1]["epoch"]) if history else 0
            self.writes.set_tag(run_id, Tag.RESUMED_FROM, str(resumed_from))
        metrics = dict(result) | schema.costs(result)  # what the trial cost so far
        if "time_this_iter_s" in result:
            metrics["epoch_seconds"] = result["time_this_iter_s"]
        self._log_epoch(run_id, metrics)

    def _log_epoch(self, run_id: str, result: dict) -> None:
        epoch = int(result.get("epoch", 0))
        if epoch <= self._last_step.get(run_id, 0):
            return  # a step already logged before an interruption
        metrics = schema.epoch_metrics(result)
        # how fast, how much memory, what it cost
        for key in ("epoch_seconds", *schema.MEASURED, *schema.COSTS):
            if key in result:
                metrics[key] = result[key]
        tags = {Tag.EPOCHS_LOGGED: str(epoch)}
        if result.get("node_ip"):
            tags[Tag.NODE_IP] = str(result["node_ip"])  # where it trained
        for tag in (Tag.FOLDS_TRAINED, Tag.DEVICE):  # fused or one by one; cpu or the GPU
            if result.get(tag):
                tags[tag] = str(result[tag])
        tracking.log_metrics(self.writes, run_id, metrics, step=epoch, tags=tags)  # one request
        self._last_step[run_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        planned = int(result.get("planned_epochs") or self.config_of(trial)["flairseg"]["epochs"])
        if epoch >= planned:
            status, text = Status.COMPLETED, f"completed {epoch} epochs"
        elif budget.cut():  # one cut before its first epoch is recorded as never started
            status = schema.budget_status(epoch) if epoch else Status.NOT_STARTED
            text = f"stopped by the time budget at epoch {epoch}/{planned}"
        else:
            status, text = (
                schema.stopped_status(epoch),
                f"stopped by ASHA at epoch {epoch}/{planned}",
            )
        value = result.get(self.metric)
        self._finish(trial, status, "FINISHED", epoch)
        self._done[self.key_of(trial)] = (status, value)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, float) else "no score"
        say(f"trial {self._label(trial)}: {text}, {shown}")
        self._maybe_status(trials, force=False)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """A time budget's end stops the running trials and tells nobody (Tune's
        `stop_all`): each is recorded here, stopped by the budget at its last epoch."""
        if not budget.cut():
            return
        live = self.__dict__.get("_live", set())  # not the trials an earlier driver ended
        for trial in trials:
            seen = self.key_of(trial) in self._done or trial.trial_id not in live
            if trial.status == "TERMINATED" and not seen and self._run_of(trial) is not None:
                self.on_trial_complete(0, trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        message = _error_line(trial)
        run_id = self._run_of(trial)
        if run_id is not None:
            self.writes.set_tag(run_id, Tag.ERROR, message[:5000])
        self._finish(trial, Status.FAILED, "FAILED", epoch)
        self._done[self.key_of(trial)] = (Status.FAILED, None)
        say(f"trial {self._label(trial)}: failed after {epoch} epochs: {message}")
        self._maybe_status(trials, force=False)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._maybe_status(trials, force=False)
        self._full_disk()

    def _full_disk(self) -> None:
        """A trial that found no room for its checkpoint pauses the study (study.diskfull)."""
        now = time.monotonic()
        if getattr(self, "_notes", None) is None or now - self._notes_asked < NOTES_EVERY_S:
            return
        self._notes_asked = now
        said = diskfull.heard(self._notes)
        if said:
            diskfull.release()  # room for Tune to save its state whole, and for the stores
            stops.pause(f"({said})", diskfull.EXIT_NO_SPACE)

    # -- helpers ------------------------------------------------------------------

    def _run_of(self, trial) -> str | None:
        return self._runs.get(self.key_of(trial))

    def _label(self, trial) -> str:
        given = self.config_of(trial)
        config = TrainConfig.from_dict(given["flairseg"])
        sampled = {k: v for k, v in given.items() if k not in CONFIG_KEYS}
        return tracking.run_name(int(given["optuna_trial"]), config, sampled)

    def _finish(self, trial, status: str, run_status: str, epoch: int) -> None:
        run_id = self._run_of(trial)
        if run_id is None:
            return
        tags = {Tag.STATUS: status, Tag.EPOCHS: str(epoch)}
        if schema.is_stopped(status):
            tags[Tag.STOPPED_AT_EPOCH] = str(epoch)
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            tags[Tag.CHECKPOINT] = checkpoint.path
            try:
                self._log_evolution(run_id, checkpoint)
            except Exception as err:  # a picture must not lose the run's status
                say(f"warning: trial {self._label(trial)}: evolution images not logged ({err})")
        for key, value in tags.items():
            self.writes.set_tag(run_id, key, value)
        self.writes.set_terminated(run_id, status=run_status)

    def _log_evolution(self, run_id: str, checkpoint) -> None:
        with checkpoint.as_directory() as folder:
            source = Path(folder) / EVOLUTION_FILE
            if not source.exists():
                return
            evolution = Evolution.load(source)
            with tempfile.TemporaryDirectory() as out:
                for k, name in enumerate(evolution.names):
                    evolution.strip(k).save(Path(out) / f"{name}.png")
                self.writes.log_artifacts(run_id, out, Artifact.EVOLUTION_DIR)
            self.writes.log_artifact(run_id, str(source), Artifact.EVOLUTION_DIR)

    def _pick(self, scores: list[float]) -> float:
        return max(scores) if self.mode == "max" else min(scores)

    def _maybe_status(self, trials: list, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.status_every:
            return
        self._last_status = now
        running = sum(t.status == "RUNNING" for t in trials)
        finished = [s for s, _ in self._done.values()]
        stopped = sum(schema.is_stopped(s) for s in finished)
        failed = sum(s == Status.FAILED for s in finished)
        scores = [v for _, v in self._done.values() if isinstance(v, float) and math.isfinite(v)]
        bests = [f"this invocation {self._pick(scores):.4f}"] if scores else []
        before = getattr(self, "study_best", None)  # a callback pickled before it has none
        if before is not None:
            bests.append(f"the study before it {before:.4f}")
        best = f"; best {self.metric}: " + ", ".join(bests) if bests else ""
        elapsed = int(now - self._started)
        say(
            f"[{elapsed // 60}m{elapsed % 60:02d}s] {len(finished)}/{self.total} trials done "
            f"({stopped} stopped early, {failed} failed), {running} running{best}"
        )


def _error_line(trial) -> str:
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


def for_invocation(opened: Any, kind: Any = None, **extra: Any) -> Any:
    """The Tune callback that logs each trial as a child of the invocation's parent run
    (`kind`: a subclass of StudyCallback, given `extra`)."""
    from study import datasets, ledger

    plan = opened.plan
    settings = dict(
        uri=plan.mlflow_uri,
        experiment_id=plan.experiment_id,
        parent_id=opened.parent_id,
        study=plan.study_name,
        search=plan.search.name,
        fingerprint=opened.data.fingerprint,
        metric=plan.search.metric,
        mode=plan.search.mode,
        total=opened.record.trials,
        status_every=plan.status_every,
        folds=plan.search.folds,
        outbox_dir=str(outbox.folder_for(opened.record.path)),
        datasets=datasets.specs(opened.data_dir, opened.data, plan.search.folds),
        study_best=getattr(ledger.best_trial(opened.study), "value", None),
    )
    return (kind or StudyCallback)(**(settings | extra))

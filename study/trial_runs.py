"""The driver's Tune callback that writes each trial's MLflow run, a child of the
invocation's parent run, through the outbox (study.outbox).

It replaces Ray's `MLflowLoggerCallback` (which opened a second run for a resumed trial and
left the first RUNNING). It is pickled with the Tuner's state, so it keeps no client or open
handle across a pickle: a restored copy reconnects and finds its runs again in MLflow.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

from flairseg.config import TrainConfig
from flairseg.evolution import EVOLUTION_FILE, Evolution
from study import budget, outbox, schema, tracking
from study.outbox import Outbox
from study.schema import Artifact, Param, Status, Tag
from study.trial_names import CONFIG_KEYS, SearchTrials, ending, error_line, say, unrecorded


class TrialRuns(Callback):
    """One MLflow run per trial (`names` says which trial a run is), its params, each
    epoch's metrics, its end; a resumed trial carries on in the run it had."""

    def __init__(
        self,
        names: SearchTrials,
        uri: str,
        experiment_id: str,
        parent_id: str,
        study: str,
        search: str,
        fingerprint: str,
        folds: int | None = None,
        outbox_dir: str | None = None,
        datasets: list[dict[str, Any]] | None = None,
    ) -> None:
        self.names = names
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.study = study
        self.search = search
        self.fingerprint = fingerprint
        self.folds = folds  # K of a cross-validated study: tagged on each trial run
        self.outbox_dir = outbox_dir  # where writes wait while the server is away
        self.datasets = datasets or []  # study.datasets specs: each trial run's inputs
        self._outbox: Outbox | None = None
        self._client = None
        self._runs: dict[Any, str] = {}
        self._last_step: dict[str, int] = {}
        self._done: set[Any] = set()  # the trials whose end is recorded
        self._live: set[str] = set()  # the trials started in this driver

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None  # found again when first needed
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
        if self._outbox is None:  # no folder: a callback pickled before outboxes had one
            folder = self.outbox_dir or outbox.cache_folder(self.parent_id)
            self._outbox = Outbox(self.uri, folder)
        return self._outbox

    # -- Tune hooks ---------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        """Find the runs this study already has (a resumed invocation keeps logging there)."""
        role = self.names.role
        for run in schema.study_runs(self.client, self.experiment_id, self.study, role=role):
            key = self.names.key_of_run(run)
            if key is None:
                continue
            self._runs[key] = run.info.run_id
            epochs = run.data.tags.get(Tag.EPOCHS_LOGGED)
            self._last_step[run.info.run_id] = int(epochs) if epochs else 0

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._live.add(trial.trial_id)
        key = self.names.key_of(trial)
        given = self.names.config_of(trial)
        config = TrainConfig.from_dict(given["flairseg"])
        run_id = self._runs.get(key)
        if run_id is not None:  # resumed: the same run carries on
            self.writes.update_run(run_id, status="RUNNING")
            self.writes.set_tag(run_id, Tag.STATUS, Status.RUNNING)
            return
        sampled = {k: v for k, v in given.items() if k not in CONFIG_KEYS}
        tags = {
            Tag.PARENT: self.parent_id,
            Tag.STUDY: self.study,
            Tag.SEARCH: self.search,
            Tag.ROLE: self.names.role,
            **self.names.identity_tags(trial),
            Tag.RAY_TRIAL_ID: trial.trial_id,
            Tag.MODEL: config.model,
            Tag.LOSS: config.loss,
            Tag.DATA_FINGERPRINT: self.fingerprint,
            Tag.STATUS: Status.RUNNING,
            Tag.PLANNED_EPOCHS: str(config.epochs),
        }
        if self.folds:
            tags[Tag.FOLDS] = str(self.folds)
        name = self.names.label(trial)
        run_id = self.writes.create_run(self.experiment_id, run_name=name, tags=tags)
        from mlflow.entities import Param as MlflowParam

        params = [MlflowParam(k, str(v)) for k, v in tracking.trial_params(config).items()]
        params += [MlflowParam(Param.SAMPLED_PREFIX + k, str(v)) for k, v in sampled.items()]
        self.writes.log_batch(run_id, params=params)
        if self.datasets:
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
        for key, value in self.names.result_tags(result).items():
            self.writes.set_tag(run_id, key, value)

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
        status, _, epoch = ending(trial, self.names.config_of(trial))
        self._finish(trial, status, "FINISHED", epoch)
        self._done.add(self.names.key_of(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The trials a time budget's end stopped (study.trial_names.unrecorded): each run
        ended, stopped by the budget at its last epoch."""
        if not budget.cut():
            return
        for trial in trials:
            if (
                unrecorded(trial, self._done, self._live, self.names)
                and self._run_of(trial) is not None
            ):
                self.on_trial_complete(0, trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        run_id = self._run_of(trial)
        if run_id is not None:
            self.writes.set_tag(run_id, Tag.ERROR, error_line(trial)[:5000])
        self._finish(trial, Status.FAILED, "FAILED", epoch)
        self._done.add(self.names.key_of(trial))

    # -- helpers ------------------------------------------------------------------

    def _run_of(self, trial) -> str | None:
        return self._runs.get(self.names.key_of(trial))

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
                label = self.names.label(trial)
                say(f"warning: trial {label}: evolution images not logged ({err})")
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

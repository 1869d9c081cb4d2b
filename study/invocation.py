"""One invocation of a study, from its record in the ledger to its runs in MLflow.

A study is extended one invocation at a time (the caller holds `ledger.StudyLock`).
An invocation is new (the next number, a fresh MLflow parent run with the search's
settings as params) or, with `--resume`, the interrupted one reopened. A new
invocation that finds the last one interrupted closes it out first (study.leftovers): its
unfinished trials become failed (killed) in Optuna and KILLED in MLflow. When Tune returns, the
invocation is marked interrupted (some planned trial never ended) or done; an error or
Ctrl+C once its parent run exists ends it too (`end_early`): nothing stays RUNNING.

Ray, MLflow and Optuna are imported inside the functions, as everywhere in `study` that
`--list` or a bad flag reaches: neither may pay for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flairseg.dataset import Dataset
from flairseg.errors import ConfigError
from flairseg.folds import split_of
from study import budget, datasets, ledger, leftovers, schema, secrets, stops, tracking
from study import search as searches
from study.environment import environment
from study.ordered import next_number
from study.plan import Plan, load_data
from study.schema import Artifact, Param, Role, Status, Tag
from study.tuner import pack_gpus, start_ray


@dataclass(frozen=True)
class Opened:
    """An invocation under way: its plan, its study, its record and its data."""

    plan: Plan  # on a --resume, the search and MLflow target its record holds
    study: Any  # the optuna.Study
    client: Any  # an MlflowClient on plan.mlflow_uri
    record: ledger.Invocation  # number, Tune folder, parent run, planned trials
    data_dir: Path
    data: Dataset

    @property
    def parent_id(self) -> str:
        """The invocation's MLflow parent run, which every trial run nests under."""
        return self.record.parent_run


def open_invocation(plan: Plan, storage: Any) -> Opened | None:
    """Open this invocation of the study, in phases: find the study and its interrupted
    invocation; prepare (the data claimed, Ray started); then, with --resume, take the
    interrupted one up again (study.leftovers), else close it out and open the next.
    None when there is nothing to run (said)."""
    study, pending = load(plan, storage)
    if plan.resume:
        if pending is None:
            leftovers.say_nothing_to_resume(study, plan.study_name)
            return None
        plan = resumed(plan, pending)
    plan, client, data_dir, data = prepare(study, plan)
    if plan.resume:
        record = leftovers.take_up(study, client, pending, plan)
    else:
        leftovers.close_out(study, pending, plan)
        record = open_new(study, client, plan, data_dir, data)
        if record is None:
            return None
    return Opened(plan, study, client, record, data_dir, data)


def load(plan: Plan, storage: Any) -> tuple[Any, ledger.Invocation | None]:
    """The study (created on first use) and its interrupted invocation, if any."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = ledger.load_study(storage, plan.study_name, plan.search.mode, plan.search.name)
    return study, ledger.unfinished(study)


def resumed(plan: Plan, pending: ledger.Invocation) -> Plan:
    """The plan as the interrupted invocation recorded it: its merged search, its data, and
    its MLflow target unless --mlflow-uri, $MLFLOW_TRACKING_URI or --experiment name another."""
    raw = dict(pending.search)
    overrides = raw.pop("_overrides", {})
    name = raw.pop("name", plan.search.name)
    # the record holds the file as that invocation merged it (profile applied)
    search = searches.parse(raw, name, plan.search.source, "full", overrides)
    explicit = plan.mlflow_uri_flag or os.environ.get("MLFLOW_TRACKING_URI")
    uri = explicit or pending.mlflow_uri or plan.mlflow_uri
    experiment = plan.experiment_flag or pending.experiment or plan.experiment
    return dataclasses.replace(
        plan,
        search=search,
        overrides=overrides,
        data_flag=pending.data,
        mlflow_uri=uri,
        experiment=experiment,
        experiment_id=tracking.open_experiment(uri, experiment),
    )


def prepare(study: Any, plan: Plan) -> tuple[Plan, Any, Path, Dataset]:
    """The plan as it runs, an MLflow client and the data, claimed for the study. Ray starts
    here, before any parent run exists: packing fractional GPUs sets the concurrency that
    the run's params and the record hold."""
    data_dir, data = plan.loaded or load_data(plan.data_flag, plan.search)
    claim_data(study, data, plan.study_name, plan.search.folds)
    client = tracking.client(plan.mlflow_uri)
    start_ray(plan.address)
    if not plan.keep_concurrency:
        plan = dataclasses.replace(plan, search=pack_gpus(plan.search))
    return plan, client, data_dir, data


def claim_data(study: Any, data: Dataset, study_name: str, folds: int | None = None) -> None:
    """A study's trials are comparable only on one data set, image size and split (and,
    cross-validated, one K): the first invocation records them, a later one on other
    data or another K is refused."""
    data_key = f"{data.fingerprint}:{data.image_size}px:{data.channels}ch:{data.split.to_dict()}"
    if folds:
        data_key += f":{folds} folds"
    owner = study.user_attrs.get("data_key")
    if owner is None:
        study.set_user_attr("data_key", data_key)
        study.set_user_attr("data_fingerprint", data.fingerprint)
    elif owner != data_key:
        raise ConfigError(
            f"--study {study_name}: it was run on other data, image size, split or --folds "
            f"({study.user_attrs.get('data_fingerprint', '?')[:12]}...); name another study"
        )


def open_new(
    study: Any, client: Any, plan: Plan, data_dir: Path, data: Dataset
) -> ledger.Invocation | None:
    """Open the next invocation: its parent run in MLflow, its record in the ledger.
    None when a grid search has no run left to add (said)."""
    search = plan.search
    points = search.optuna_points()
    trials = _trials_to_add(study, plan, points)
    if trials == 0:
        print(f"study {plan.study_name}: every grid run of {search.name} has run; nothing to add")
        return None
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    first_trial, _ = next_number(study)
    records = ledger.invocations(study)
    number = records[-1].number + 1 if records else 1
    path = f"{plan.results_root}/{plan.study_name}/run-{number}"
    parent = client.create_run(
        plan.experiment_id,
        run_name=f"{plan.study_name} #{number}",
        tags=_parent_tags(plan, number, path, data_dir, data),
    )
    parent_id = parent.info.run_id
    try:
        datasets.log(client, parent_id, datasets.specs(data_dir, data, search.folds))
        return _record(study, client, plan, trials, number, path, parent_id, data_dir, first_trial)
    except BaseException as err:  # no record names the parent yet: it ends here
        with contextlib.suppress(Exception):
            _end_parent(client, parent_id, err)
        raise


def _record(
    study: Any,
    client: Any,
    plan: Plan,
    trials: int,
    number: int,
    path: str,
    parent_id: str,
    data_dir: Path,
    first_trial: int,
) -> ledger.Invocation:
    """The new parent run's params and search, and the invocation's record in the ledger."""
    from mlflow.entities import Param as MlflowParam

    search = plan.search
    params = _parent_params(plan, trials)
    client.log_batch(parent_id, params=[MlflowParam(k, str(v)) for k, v in params.items()])
    raw = search.to_dict()
    raw["_overrides"] = plan.overrides
    tracking.log_json(client, parent_id, raw, Artifact.SEARCH)
    record = ledger.Invocation(
        number=number,
        path=path,
        parent_run=parent_id,
        trials=trials,
        state="running",
        started=ledger.now(),
        host=socket.gethostname(),
        pid=os.getpid(),
        search=raw,
        data=str(data_dir) if plan.data_flag else "",
        profile=plan.profile,
        seed=plan.seed,
        mlflow_uri=plan.mlflow_uri,
        experiment=plan.experiment,
        first_trial=first_trial,
    )
    ledger.start(study, record)
    return record


def _trials_to_add(study: Any, plan: Plan, points: list[dict[str, Any]]) -> int:
    """The search's trials; for a grid, the runs no earlier invocation ran (--trials caps)."""
    if not plan.search.grid:
        return plan.search.trials
    import optuna

    done = {
        t.params.get("run")
        for t in study.get_trials(deepcopy=False)
        if t.state != optuna.trial.TrialState.WAITING
    }
    left = [p for p in points if p["run"] not in done]
    return min(plan.trials_flag or len(left), len(left))


def _parent_tags(
    plan: Plan, number: int, path: str, data_dir: Path, data: Dataset
) -> dict[str, str]:
    """The parent run's tags: what ran, on which data, where its results and ledger live,
    and on what code and machine (study.environment)."""
    command = secrets.command_line(list(plan.argv))  # a password never: its variable instead
    return (
        {
            Tag.STUDY: plan.study_name,
            Tag.SEARCH: plan.search.name,
            Tag.ROLE: Role.STUDY,
            Tag.INVOCATION: str(number),
            Tag.DATA: str(data_dir),
            Tag.DATA_FINGERPRINT: data.fingerprint,
            Tag.IMAGE_SIZE: str(data.image_size),
            Tag.PROFILE: plan.profile,
            Tag.RESULTS: path,
            Tag.OPTUNA_STORAGE: plan.optuna_url,
            Tag.COMMAND: command,
            Tag.SPLIT: schema.dump_split(split_of(data, plan.search.folds, _split_seed(plan))),
        }
        | ({Tag.FOLDS: str(plan.search.folds)} if plan.search.folds else {})
        | environment()
    )


def _split_seed(plan: Plan) -> int:
    """The split seed every trial of the search shares (a shared setting, never sampled)."""
    from flairseg.config import TrainConfig

    return TrainConfig.from_dict(plan.search.fixed).split_seed


def _parent_params(plan: Plan, trials: int) -> dict[str, Any]:
    """The parent run's params: the search's settings as this invocation runs them."""
    search = plan.search
    asha = search.asha
    return (
        {
            Param.SEARCH: search.name,
            Param.TRIALS: trials,
            Param.OBJECTIVE: schema.dump_objective(search.metric, search.mode),
            Param.MAX_EPOCHS: asha.max_epochs,
            Param.GRACE_PERIOD: asha.grace_period if asha.enabled else "off",
            Param.REDUCTION_FACTOR: asha.reduction_factor if asha.enabled else "off",
            Param.CONCURRENCY: search.concurrency,
            Param.CPUS_PER_TRIAL: search.cpus,
            Param.SAMPLER_SEED: plan.seed,
            Param.PROFILE: plan.profile,
            Param.FAST_PATH: plan.speed.fast,
            Param.COMPILE: plan.speed.compile,
            Param.DECISIONS: search.decisions,
        }
        | ({Param.FOLDS: search.folds} if search.folds else {})
        | ({Param.TIME_BUDGET: search.time_budget} if search.time_budget else {})
    )


def all_trials_ended(opened: Opened) -> bool:
    """MLflow is the record: the invocation is done when each planned trial has ended."""
    plan = opened.plan
    runs = tracking.study_runs(opened.client, plan.experiment_id, plan.study_name, Role.TRIAL)
    ended = [
        r
        for r in runs
        if r.data.tags.get(Tag.PARENT) == opened.parent_id
        and r.info.status in ("FINISHED", "FAILED")
    ]
    return len(ended) >= opened.record.trials


def mark_interrupted(opened: Opened) -> None:
    """Leave nothing RUNNING, mark the record interrupted, and say how to finish it."""
    plan = opened.plan
    ledger.release_connections()  # a Ctrl+C inside a store's write left it locked
    n = tracking.close_out(
        plan.mlflow_uri, plan.experiment_id, plan.study_name, reason=Status.INTERRUPTED
    )
    # a time budget goes on, on --resume, with what is left of it
    ledger.mark(opened.study, opened.record.number, "interrupted", **budget.paused())
    by = f" {stops.caught()}" if stops.caught() else ""
    print(
        f"interrupted{by}: {n} runs marked KILLED in MLflow; finish this invocation with\n"
        f"  {plan.resume_command}",
        file=sys.stderr,
    )


def end_early(opened: Opened, err: BaseException) -> bool:
    """An error or Ctrl+C once the parent run exists; the caller re-raises `err`. Ctrl+C
    interrupts the invocation (`mark_interrupted`); an error fails it: its stray runs
    KILLED and trials failed (killed), the parent FAILED, the record `failed`. Each step
    is tried though one before failed (the store that raised `err` may refuse them too):
    nothing that can be ended stays RUNNING, and a step that failed is said in a line.
    For a Ctrl+C: whether its line (and the resume command) was said."""
    plan = opened.plan
    if isinstance(err, KeyboardInterrupt):
        steps = [lambda: mark_interrupted(opened)]
    else:
        steps = [
            lambda: ledger.close_out_trials(opened.study),
            lambda: tracking.close_out(
                plan.mlflow_uri, plan.experiment_id, plan.study_name, keep=opened.parent_id
            ),
            lambda: ledger.mark(opened.study, opened.record.number, "failed"),
        ]
    steps.append(lambda: _end_parent(opened.client, opened.parent_id, err))
    failed, done = [], []
    for step in steps:
        try:
            step()
            done.append(step)
        except Exception as again:
            failed.append(secrets.first_line(again))
    if failed:
        print(
            f"warning: invocation #{opened.record.number} of study {plan.study_name} could not "
            f"be closed ({failed[0]}); the next invocation closes it out",
            file=sys.stderr,
        )
    return isinstance(err, KeyboardInterrupt) and steps[0] in done  # mark_interrupted said it


def _end_parent(client: Any, parent_id: str, err: BaseException) -> None:
    """End the parent run: KILLED for a Ctrl+C, as `mark_interrupted` does, else FAILED."""
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    client.set_terminated(parent_id, status=status)


def close_strays(opened: Opened) -> None:
    """Nothing of this study may stay RUNNING once its driver is done (we hold the lock)."""
    plan = opened.plan
    strays = ledger.close_out_trials(opened.study) + tracking.close_out(
        plan.mlflow_uri, plan.experiment_id, plan.study_name, keep=opened.parent_id
    )
    if strays:
        print(f"warning: {strays} trials or runs left RUNNING were recorded as killed")


def mark_done(opened: Opened, succeeded: bool) -> None:
    """End the parent run (FAILED when no trial produced a score) and the record."""
    opened.client.set_terminated(opened.parent_id, status="FINISHED" if succeeded else "FAILED")
    ledger.mark(opened.study, opened.record.number, "done")

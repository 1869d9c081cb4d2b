"""Run a hyperparameter study: `python -m study.run --search combo_alpha`.

Optuna (TPE, seeded) proposes, ASHA stops on the epoch counter, Ray Tune places the
trials, every trial lands in MLflow as a child of the invocation's parent run. At the
end the study's best configuration is scored once on the test split and a summary
prints (and `--json FILE` writes it).

A study has a name (`--study`, default the search's name) and lives in Optuna's
storage. Each invocation adds `--trials` trials to it and the sampler sees all earlier
ones; `--resume` finishes an interrupted invocation instead. An invocation that finds
the last one interrupted and is not asked to resume closes it out first (its
unfinished trials become failed/killed in Optuna and KILLED in MLflow).

Profiles: the search files hold research-sized settings. With no GPU and no
`--address`, the `laptop` profile applies the file's `laptop:` overrides (smaller
images, fewer trials and epochs) so the bare command finishes in minutes on a CPU;
`--profile full` runs the file as written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flairseg.config import TrainConfig
from flairseg.data import load_slices
from flairseg.dataset import Dataset, make_dataset
from flairseg.engine import FAST, Speed, load_checkpoint, model_from_checkpoint, score_model
from flairseg.errors import ArgumentParser, ConfigError, run_cli
from flairseg.losses import build_loss
from flairseg.train import default_data, write_json
from study import ledger, tracking
from study import search as searches

DEFAULT_STORAGE = "studies"
EXIT_NO_TRIAL_SUCCEEDED = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    p.add_argument("--search", help="a name in experiments/ (see --list) or a path to a .yaml file")
    p.add_argument("--list", action="store_true", help="print the searches and their spaces")
    p.add_argument("--data", help="kaggle_3m folder (default: the synthetic phantom set)")
    p.add_argument("--image-size", type=int, help="override the search's image size")
    p.add_argument("--trials", type=int, help="trials this invocation adds to the study")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial (ASHA's max_t)")
    p.add_argument("--epoch-scale", type=float, help="multiply grid/budget epoch counts")
    p.add_argument("--concurrency", type=int, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs (and torch threads) per trial")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed (default: 1 when the cluster has GPUs, else 0)",
    )
    p.add_argument("--address", help="join a running Ray cluster (HOST:PORT or auto)")
    p.add_argument(
        "--mlflow-uri",
        help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    p.add_argument("--experiment", help="MLflow experiment (default: the search's name)")
    p.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="results folder or URI for Ray Tune (default: ./studies)",
    )
    p.add_argument(
        "--optuna-storage",
        help="Optuna database URL (default: sqlite:///STORAGE/optuna.db)",
    )
    p.add_argument("--study", help="study name (default: the search's name)")
    p.add_argument(
        "--resume", action="store_true", help="finish the study's interrupted invocation"
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="write the summary here")
    p.add_argument(
        "--profile",
        choices=("auto", "laptop", "full"),
        default="auto",
        help="auto: laptop without GPU or --address, else full",
    )
    p.add_argument("--status-every", type=float, default=30.0, help="seconds between status lines")
    p.add_argument(
        "--no-fast-path",
        action="store_true",
        help="trials train in plain fp32, default layout (the fast path's reference)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="trials torch.compile their model (compile time first)",
    )
    return p


# --------------------------------------------------------------------------- checks


def list_searches() -> None:
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


def probe_address(address: str | None) -> None:
    """An unreachable Ray address fails in seconds with one line, not after Ray's retries."""
    if address in (None, "auto", "local") or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address {address}: give HOST:PORT of the Ray head (or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise ConfigError(
            f"--address {address}: no Ray head answers there ({err.strerror or err})"
        ) from None


def resolve_profile(profile: str, address: str | None) -> str:
    if profile != "auto":
        return profile
    return "full" if address or torch.cuda.is_available() else "laptop"


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "trials": "trials",
        "max_epochs": "max_epochs",
        "concurrency": "concurrency",
        "cpus_per_trial": "cpus",
        "gpus_per_trial": "gpus",
        "image_size": "image_size",
        "epoch_scale": "epoch_scale",
    }
    return {
        key: getattr(args, flag) for flag, key in names.items() if getattr(args, flag) is not None
    }


def load_data(data: str | None, search: searches.Search) -> tuple[Path, Dataset]:
    folder = Path(data) if data else default_data()
    if data and not folder.is_dir():
        raise ConfigError(f"--data {data}: no such folder")
    base = TrainConfig.from_dict(search.fixed)
    slices = load_slices(folder, base.image_size)
    return folder, make_dataset(slices, base)


# --------------------------------------------------------------------------- Ray


def quiet() -> None:
    """Our lines instead of Ray's boxes and tables, MLflow's and Optuna's INFO chatter."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("ray", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING if name != "ray" else logging.ERROR)


def start_ray(address: str | None) -> None:
    import ray

    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    # without --address: always a fresh Ray on this machine ("local"); a bare ray.init() would
    # join any cluster a `ray start` left running here, and its busy or dying nodes with it
    kwargs["address"] = address or "local"
    try:
        ray.init(**kwargs)
    except Exception as err:  # ConnectionError and friends, worded by Ray
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--address {address}: cannot join the Ray cluster ({first[:200]})"
        ) from None


def gpus_per_trial(search: searches.Search) -> float:
    if search.gpus != "auto":
        return float(search.gpus)
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def pack_gpus(search: searches.Search) -> searches.Search:
    """With a fraction of a GPU per trial, run as many at once as the cluster's GPUs hold.

    `--gpus-per-trial 0.25` on one GPU means four trials side by side; the search's
    concurrency would otherwise cap them (an explicit --concurrency still wins).
    """
    gpus = gpus_per_trial(search)
    if not 0 < gpus < 1:
        return search
    import ray

    fits = int(ray.cluster_resources().get("GPU", 0) / gpus + 1e-9)
    if fits <= search.concurrency:
        return search
    return dataclasses.replace(search, concurrency=fits)


def make_tuner(
    search: searches.Search,
    data: Dataset,
    study_name: str,
    storage,
    path: str,
    callback,
    trials: int,
    seed: int,
    resume: bool,
    speed: Speed = FAST,
):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from study.searcher import StudySearch
    from study.trainable import run_trial

    gpus = gpus_per_trial(search)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, threads=max(1, int(search.cpus)), speed=speed),
        {"cpu": search.cpus, "gpu": gpus},
    )
    if resume:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True), gpus
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # multivariate/group TPE are marked experimental; they are what conditional spaces need
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    conditional = any(d.model or d.when for d in search.dims)
    sampler = optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=search.startup_trials,
        multivariate=conditional,
        group=conditional,
    )
    searcher = StudySearch(
        experiment_path=path,
        space=search,
        metric=search.metric,
        mode=search.mode,
        sampler=sampler,
        study_name=study_name,
        storage=storage,
    )
    if search.asha.enabled:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=search.asha.max_epochs,
            grace_period=search.asha.grace_period,
            reduction_factor=search.asha.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    storage_path, name = path.rsplit("/", 1)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=trials,
            max_concurrent_trials=search.concurrency,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[callback],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    return tuner, gpus


def trial_dirname(trial) -> str:
    """`trial-0003-<ray id>` instead of Ray's name built from every config value."""
    return f"trial-{int(trial.config['optuna_trial']):04d}-{trial.trial_id}"


def results_root(storage: str) -> str:
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).resolve())


# --------------------------------------------------------------------------- the end


def summarise(
    uri: str,
    experiment_id: str,
    parent_id: str,
    study,
    study_name: str,
    data: Dataset,
    search: searches.Search,
    speed: Speed = FAST,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Counts from the invocation's MLflow children; the study's best trial scored on test."""
    c = tracking.client(uri)
    trial_runs = tracking.study_runs(c, experiment_id, study_name, role="trial")  # read once
    children = [r for r in trial_runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    by_status: dict[str, int] = {}
    stops: dict[int, int] = {}
    spent = without = 0
    for run in children:
        tags = run.data.tags
        status = tags.get("status", "unknown")
        epochs = int(tags.get("epochs", tags.get("epochs_logged", 0)) or 0)
        planned = int(tags.get("planned_epochs", epochs) or epochs)
        key = "stopped" if status.startswith("stopped") else status
        by_status[key] = by_status.get(key, 0) + 1
        if key == "stopped":
            stops[epochs] = stops.get(epochs, 0) + 1
        spent += epochs
        without += epochs if key in ("failed", "killed") else planned
    summary: dict[str, Any] = {
        "study": study_name,
        "search": search.name,
        "trials": by_status,
        "stopped_at_epoch": {str(k): v for k, v in sorted(stops.items())},
        "epochs_spent": spent,
        "epochs_without_stopping": without,
        "objective": search.metric,
        "study_trials": len(study.trials),
    }
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return summary
    best = study.best_trial
    runs = [r for r in trial_runs if r.data.tags.get("optuna_trial") == str(best.number)]
    if not runs or "checkpoint" not in runs[0].data.tags:
        return summary
    run = runs[0]
    config, ckpt, scores = score_checkpoint(
        run.data.tags["checkpoint"], data, c, parent_id, device, speed
    )
    summary.update(
        {
            "best_trial": best.number,
            "best_run": run.info.run_id,
            "best_name": run.info.run_name,
            "best_epochs": int(ckpt["epoch"]),
            "best_config": config.to_dict(),
            **{k: round(v, 6) for k, v in scores.items()},
        }
    )
    tracking.log_metrics(c, parent_id, scores)
    tracking.log_json(c, parent_id, config.to_dict(), "best_config.json")
    c.set_tag(parent_id, "best_trial", str(best.number))
    c.set_tag(parent_id, "best_run", run.info.run_id)
    if data.test is not None:
        score_group_bests(c, trial_runs, search, data, device, speed)
    return summary


def scoring_device(gpus: float) -> torch.device:
    """The device a trial trains on, for the driver's scores: CUDA when trials get `gpus`
    and this process sees one, else the CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def score_checkpoint(
    where: str,
    data: Dataset,
    c=None,
    parent_id: str | None = None,
    device: torch.device | None = None,
    speed: Speed = FAST,
) -> tuple[TrainConfig, dict[str, Any], dict[str, float]]:
    """Load a trial's checkpoint and score it on val and (once) on test, on `device` with
    the trials' `speed` (precision and layout), so val matches what the trial logged."""
    from ray import tune

    with tune.Checkpoint(where).as_directory() as folder:
        state_file = Path(folder) / "state.pt"
        ckpt = load_checkpoint(state_file)
        config, model = model_from_checkpoint(ckpt)
        loss = build_loss(config.loss, config.alpha)
        parts = {"val": data.val} | ({"test": data.test} if data.test is not None else {})
        scores = score_model(model, parts, loss, device or torch.device("cpu"), speed)
        if c is not None and parent_id is not None:
            c.log_artifact(parent_id, str(state_file), "best")
    return config, ckpt, scores


def score_group_bests(
    c, trial_runs: list, search, data: Dataset, device: torch.device | None, speed: Speed
) -> None:
    """The best trial of each model x loss group gets its test scores, for the family report.

    Selection stays on val; test only describes the group's best, once per trial.
    """
    groups: dict[tuple[str, str], Any] = {}
    pick = max if search.mode == "max" else min
    for run in trial_runs:
        tags, value = run.data.tags, run.data.metrics.get(search.metric)
        ok = tags.get("status") == "completed" or tags.get("status", "").startswith("stopped")
        if not ok or value is None or not math.isfinite(value) or "checkpoint" not in tags:
            continue
        key = (tags.get("model", "?"), tags.get("loss", "?"))
        if key not in groups or pick(value, groups[key].data.metrics[search.metric]) == value:
            groups[key] = run
    for run in groups.values():
        if "test_iou" in run.data.metrics:
            continue
        try:
            where = run.data.tags["checkpoint"]
            _, _, scores = score_checkpoint(where, data, device=device, speed=speed)
        except Exception as err:  # a checkpoint that is gone must not sink the study
            print(f"warning: {run.info.run_name}: not scored on test ({err})")
            continue
        tracking.log_metrics(
            c, run.info.run_id, {k: v for k, v in scores.items() if k.startswith("test_")}
        )
        c.set_tag(run.info.run_id, "test_scored", "best of its model and loss")


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


def print_summary(summary: dict[str, Any], seconds: float, uri: str, experiment: str) -> str:
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


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet()
    if args.list:
        list_searches()
        return 0
    if not args.search:
        raise ConfigError("--search: give a search name (see --list) or a .yaml path")
    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json {args.json}: is a folder; give a file name")
    for flag in ("trials", "max_epochs", "concurrency", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {args.gpus_per_trial}: must be at least 0")

    storage_root = results_root(args.storage)
    optuna_url = args.optuna_storage or (
        f"sqlite:///{storage_root}/optuna.db" if "://" not in storage_root else None
    )
    if optuna_url is None:
        raise ConfigError(
            f"--storage {args.storage} is a URI: give --optuna-storage (a database URL)"
        )
    probe_address(args.address)

    # the study's record decides what a --resume runs; a new invocation reads the file
    profile = resolve_profile(args.profile, args.address)
    search = searches.load(args.search, profile, overrides_from(args))
    study_name = args.study or search.name
    # check everything a user can get wrong before anything is written
    loaded = None if args.resume else load_data(args.data, search)
    uri = args.mlflow_uri or tracking.default_uri()
    experiment = args.experiment or search.name
    # a --resume logs where its invocation logged (read from the study's record below)
    experiment_id = None if args.resume else tracking.open_experiment(uri, experiment)
    storage = ledger.open_storage(optuna_url)
    lock = ledger.StudyLock(optuna_url, study_name).acquire()
    try:
        return _run(
            args, search, profile, study_name, storage, storage_root, optuna_url,
            loaded, uri, experiment, experiment_id,
        )  # fmt: skip
    finally:
        lock.release()


def _run(
    args, search, profile, study_name, storage, storage_root, optuna_url,
    loaded, uri, experiment, experiment_id,
) -> int:  # fmt: skip
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = ledger.load_study(storage, study_name, search.mode, search.name)
    pending = ledger.unfinished(study)
    resume = bool(args.resume)
    if resume:
        if pending is None:
            records = ledger.invocations(study)
            last = (
                f"invocation #{records[-1].number} finished"
                if records
                else "it has no invocation yet"
            )
            print(f"study {study_name}: nothing to resume ({last})")
            return 0
        raw = dict(pending.search)
        overrides = raw.pop("_overrides", {})
        name = raw.pop("name", search.name)
        # the record holds the file as that invocation merged it (profile applied)
        search = searches.parse(raw, name, search.source, "full", overrides)
        # where the invocation logged, unless the flags (or MLFLOW_TRACKING_URI) say otherwise
        explicit = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        uri = explicit or pending.mlflow_uri or uri
        experiment = args.experiment or pending.experiment or experiment
        experiment_id = tracking.open_experiment(uri, experiment)
        data_arg = pending.data
    else:
        data_arg = args.data

    data_dir, data = loaded or load_data(data_arg, search)
    data_key = f"{data.fingerprint}:{data.image_size}px:{data.channels}ch:{data.split.to_dict()}"
    owner = study.user_attrs.get("data_key")
    if owner is None:
        study.set_user_attr("data_key", data_key)
        study.set_user_attr("data_fingerprint", data.fingerprint)
    elif owner != data_key:
        raise ConfigError(
            f"--study {study_name}: it was run on other data, image size or split "
            f"({study.user_attrs.get('data_fingerprint', '?')[:12]}...); name another study"
        )
    c = tracking.client(uri)
    start_ray(args.address)
    if args.concurrency is None:
        search = pack_gpus(search)

    if pending is not None and not resume:
        killed_trials = ledger.close_out_trials(study)
        killed_runs = tracking.close_out(uri, experiment_id, study_name)
        ledger.mark(study, pending.number, "closed")
        print(
            f"closed out invocation #{pending.number} of study {study_name}, which was interrupted: "
            f"{killed_trials} unfinished trials recorded as failed (killed), {killed_runs} MLflow runs KILLED"
        )

    if resume:
        record = pending
        from ray import tune

        if not tune.Tuner.can_restore(record.path):
            raise ConfigError(
                f"study {study_name}: invocation #{record.number} left no Tune state at {record.path} "
                "to resume; run without --resume to close it out"
            )
        trials = record.trials
        parent_id = record.parent_run
        c.update_run(parent_id, status="RUNNING")
        ledger.mark(study, record.number, "running")
    else:
        trials = search.trials
        points = search.optuna_points()
        if search.grid:
            done = {
                t.params.get("run")
                for t in study.get_trials(deepcopy=False)
                if t.state != optuna.trial.TrialState.WAITING
            }
            left = [p for p in points if p["run"] not in done]
            trials = min(args.trials or len(left), len(left))
            if trials == 0:
                print(
                    f"study {study_name}: every grid run of {search.name} has run; nothing to add"
                )
                return 0
        for point in points:
            study.enqueue_trial(point, skip_if_exists=True)
        records = ledger.invocations(study)
        number = records[-1].number + 1 if records else 1
        path = f"{storage_root}/{study_name}/run-{number}"
        parent = c.create_run(
            experiment_id,
            run_name=f"{study_name} #{number}",
            tags={
                "study": study_name,
                "search": search.name,
                "role": "study",
                "invocation": str(number),
                "data": str(data_dir),
                "data_fingerprint": data.fingerprint,
                "image_size": str(data.image_size),
                "profile": profile,
                "results": path,
                "optuna_storage": optuna_url,
                "command": "python -m study.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                "split": str(data.split.to_dict()),
            },
        )
        parent_id = parent.info.run_id
        from mlflow.entities import Param

        c.log_batch(
            parent_id,
            params=[
                Param(k, str(v))
                for k, v in {
                    "search": search.name,
                    "trials": trials,
                    "objective": f"{search.metric} ({search.mode})",
                    "max_epochs": search.asha.max_epochs,
                    "grace_period": search.asha.grace_period if search.asha.enabled else "off",
                    "reduction_factor": search.asha.reduction_factor
                    if search.asha.enabled
                    else "off",
                    "concurrency": search.concurrency,
                    "cpus_per_trial": search.cpus,
                    "sampler_seed": args.seed,
                    "profile": profile,
                    "fast_path": not args.no_fast_path,
                    "compile": args.compile,
                }.items()
            ],
        )
        raw = search.to_dict()
        raw["_overrides"] = overrides_from(args)
        tracking.log_json(c, parent_id, raw, "search.json")
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
            data=str(data_dir) if args.data else "",
            profile=profile,
            seed=args.seed,
            mlflow_uri=uri,
            experiment=experiment,
        )
        ledger.start(study, record)

    callback_args = dict(
        uri=uri,
        experiment_id=experiment_id,
        parent_id=parent_id,
        study=study_name,
        search=search.name,
        fingerprint=data.fingerprint,
        metric=search.metric,
        mode=search.mode,
        total=trials,
        status_every=args.status_every,
    )
    from study.callbacks import StudyCallback

    callback = StudyCallback(**callback_args)
    speed = Speed(fast=not args.no_fast_path, compile=args.compile)
    # the sampler's seed moves with the study's history, so an extension does not replay
    sampler_seed = args.seed + len(study.trials)
    tuner, gpus = make_tuner(
        search,
        data,
        study_name,
        storage,
        record.path,
        callback,
        trials,
        sampler_seed,
        resume,
        speed,
    )
    _banner(
        search,
        data_dir,
        data,
        trials,
        gpus,
        profile,
        uri,
        experiment,
        record,
        study_name,
        resume,
        optuna_url,
    )
    started = time.monotonic()
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        tuner.fit()  # Ray catches Ctrl+C itself: it saves its state and returns early
    seconds = time.monotonic() - started
    # MLflow is the record: the invocation is done when each planned trial has ended
    ended = [
        r
        for r in tracking.study_runs(c, experiment_id, study_name, role="trial")
        if r.data.tags.get("mlflow.parentRunId") == parent_id
        and r.info.status in ("FINISHED", "FAILED")
    ]
    interrupted = len(ended) < trials
    if interrupted:
        n = tracking.close_out(uri, experiment_id, study_name, reason="interrupted")
        ledger.mark(study, record.number, "interrupted")
        print(
            f"interrupted: {n} runs marked KILLED in MLflow; finish this invocation with\n"
            f"  python -m study.run --search {args.search} --study {study_name} "
            f"--storage {args.storage}"
            + (f" --optuna-storage {args.optuna_storage}" if args.optuna_storage else "")
            + " --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED

    # nothing of this study may stay RUNNING once its driver is done (we hold the lock)
    strays = ledger.close_out_trials(study) + tracking.close_out(
        uri, experiment_id, study_name, keep=parent_id
    )
    if strays:
        print(f"warning: {strays} trials or runs left RUNNING were recorded as killed")
    summary = summarise(
        uri, experiment_id, parent_id, study, study_name, data, search, speed, scoring_device(gpus)
    )
    summary["seconds"] = round(seconds, 1)
    summary["invocation"] = record.number
    summary["data"] = str(data_dir)
    summary["split"] = data.split.to_dict()
    tracking.log_json(c, parent_id, summary, "summary.json")
    line = print_summary(summary, seconds, uri, experiment)
    if args.json:
        write_json(args.json, summary)
    ok = (
        "best_config" in summary
        and sum(v for k, v in summary["trials"].items() if k in ("completed", "stopped")) > 0
    )
    c.set_terminated(parent_id, status="FINISHED" if ok else "FAILED")
    ledger.mark(study, record.number, "done")
    report = (
        f"{record.path}/report.html"
        if "://" not in record.path
        else str(Path(tempfile.mkdtemp(prefix="flairseg-report-")) / "report.html")
    )
    write_report(uri, experiment, study_name, parent_id, report)
    print(line)
    return 0 if ok else EXIT_NO_TRIAL_SUCCEEDED


def _banner(
    search,
    data_dir,
    data,
    trials,
    gpus,
    profile,
    uri,
    experiment,
    record,
    study_name,
    resume,
    optuna_url,
) -> None:
    what = "resuming" if resume else "running"
    budget = (
        f"ASHA: up to {search.asha.max_epochs} epochs, grace {search.asha.grace_period}, "
        f"reduction {search.asha.reduction_factor:g}"
        if search.asha.enabled
        else f"no early stopping, up to {search.asha.max_epochs} epochs"
    )
    print(
        f"{what} study {study_name} (search {search.name}, profile {profile}"
        + (
            ", the laptop-sized settings of the search file; --profile full for the research ones"
            if profile == "laptop"
            else ""
        )
        + f"), invocation #{record.number}: {trials} trials\n"
        f"  data: {data_dir} ({len(data.split.train)}/{len(data.split.val)}/{len(data.split.test)} patients "
        f"train/val/test, {data.image_size} px)\n"
        f"  {budget}; objective {search.metric} ({search.mode})\n"
        f"  {search.concurrency} at a time, {search.cpus:g} CPU and {gpus:g} GPU per trial\n"
        f"  MLflow: {uri} (experiment {experiment}); Optuna: {optuna_url}; Tune: {record.path}",
        flush=True,
    )


if __name__ == "__main__":
    run_cli(main)

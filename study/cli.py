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

The flow, a module each: cli (flags) -> plan (what runs) -> invocation (the ledger and
MLflow) -> tuner (Ray Tune) -> results (counts, test scores, report) -> console.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flairseg.errors import ArgumentParser, ConfigError, FlairsegError
from flairseg.train import write_json
from study import invocation, ledger, results, secrets
from study.console import banner, list_searches, print_summary, quiet
from study.plan import Plan, make_plan
from study.tuner import TuneJob, fit, make_tuner, scoring_device

DEFAULT_STORAGE = "studies"
EXIT_NO_TRIAL_SUCCEEDED = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m study.run`; a bad one is one line and exit status 2."""
    p = ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    p.add_argument("--search", help="a name in experiments/ (see --list) or a path to a .yaml file")
    p.add_argument("--list", action="store_true", help="print the searches and their spaces")
    p.add_argument("--data", help="kaggle_3m folder (default: the synthetic phantom set)")
    add_budget_flags(p)
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
        help="Optuna database URL (default: $OPTUNA_STORAGE, else sqlite:///STORAGE/optuna.db); "
        "a password in it is never written: better give it in $OPTUNA_STORAGE or ~/.pgpass",
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


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    """The flags that override what the search file says a study runs, and on what."""
    p.add_argument("--image-size", type=int, help="override the search's image size")
    p.add_argument("--trials", type=int, help="trials this invocation adds to the study")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial (ASHA's max_t)")
    p.add_argument("--epoch-scale", type=float, help="multiply grid/budget epoch counts")
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="every trial trains K patient folds and is ranked and stopped on their mean "
        "(overrides the search file's cv: {folds: K})",
    )
    p.add_argument("--concurrency", type=int, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs (and torch threads) per trial")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed (default: 1 when the cluster has GPUs, else 0)",
    )


def check_args(args: argparse.Namespace) -> None:
    """The checks argparse cannot make; a ConfigError names the flag."""
    if not args.search:
        raise ConfigError("--search: give a search name (see --list) or a .yaml path")
    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json {args.json}: is a folder; give a file name")
    for flag in ("trials", "max_epochs", "concurrency", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    if args.folds is not None and args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: must be at least 2")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {args.gpus_per_trial}: must be at least 0")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m study.run`: the exit status (0, 1 when no trial succeeded, 130 when
    interrupted); a bad input raises ConfigError, which `run_cli` turns into exit 2."""
    args = build_parser().parse_args(argv)
    quiet()
    if args.list:
        list_searches()
        return 0
    check_args(args)
    try:
        plan = make_plan(args)
        storage = ledger.open_storage(plan.optuna_url)
        lock = ledger.StudyLock(plan.optuna_url, plan.study_name).acquire()
        try:
            return run_study(plan, storage)
        finally:
            lock.release()
    except FlairsegError as err:  # a line that quotes a URL shows no password taken from it
        raise type(err)(secrets.scrub(str(err))) from None


def run_study(plan: Plan, storage: Any) -> int:
    """Open the invocation, run its trials, then summarise, score and report (the caller
    holds the study's lock)."""
    opened = invocation.open_invocation(plan, storage)
    if opened is None:
        return 0
    plan = opened.plan  # a --resume runs what its record holds
    job = TuneJob(
        search=plan.search,
        data=opened.data,
        study_name=plan.study_name,
        storage=storage,
        path=opened.record.path,
        callback=invocation.trial_logger(opened),
        trials=opened.record.trials,
        # the sampler's seed moves with the study's history, so an extension does not replay
        seed=plan.seed + len(opened.study.trials),
        resume=plan.resume,
        speed=plan.speed,
    )
    tuner, gpus = make_tuner(job)
    banner(opened, gpus)
    seconds = fit(tuner)
    if not invocation.all_trials_ended(opened):
        invocation.mark_interrupted(opened)
        return EXIT_INTERRUPTED
    invocation.close_strays(opened)
    summary = results.summarise(opened, seconds, scoring_device(gpus))
    line = print_summary(summary, seconds, plan.mlflow_uri, plan.experiment)
    if plan.json_path:
        write_json(plan.json_path, summary)
    ok = results.succeeded(summary)
    invocation.mark_done(opened, ok)
    report = results.report_path(opened.record.path)
    results.write_report(
        plan.mlflow_uri, plan.experiment, plan.study_name, opened.parent_id, report
    )
    print(line)
    return 0 if ok else EXIT_NO_TRIAL_SUCCEEDED

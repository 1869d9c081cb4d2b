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

Ctrl+C stops a study at any moment (exit 130): once the invocation's parent run exists
it is left KILLED and the invocation resumable; an error then leaves it FAILED. Two
invocations of one study started at once: one runs, the other is refused in one line.
An MLflow server that stops answering does not stop the trials (study.outbox keeps the
writes and replays them when it answers); still away at the end: one line, exit 3, and
`--resume` writes the rest once it is back.

The flow, a module each: cli (flags) -> plan (what runs) -> invocation (the ledger and
MLflow) -> tuner (Ray Tune) -> results (counts, test scores, report) -> console.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from flairseg.errors import ArgumentParser, ConfigError, FlairsegError
from flairseg.speed import FUSE_HELP
from flairseg.train import write_json
from study import (
    budget,
    diskfull,
    invocation,
    ledger,
    notify,
    outbox,
    outputs,
    register,
    results,
    secrets,
    stops,
)
from study.console import banner, headline, list_searches, print_summary, quiet
from study.plan import Plan, make_plan, open_tracking, with_data
from study.tuner import (
    TuneJob,
    check_interrupted,
    fit,
    latched_interrupts,
    make_tuner,
    scoring_device,
)

DEFAULT_STORAGE = "studies"
EXIT_NO_TRIAL_SUCCEEDED = 1
EXIT_MLFLOW_AWAY = 3  # the trials ended, MLflow did not answer: --resume writes the rest
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
        "--register",
        metavar="NAME",
        help="the MLflow registered model that the best model becomes a version of "
        "(default: the study's name)",
    )
    p.add_argument("--no-register", action="store_true", help="register no model")
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
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, help=FUSE_HELP)
    notify.add_flags(p)  # --notify URL, --notify-format
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
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="the invocation's wall time (90s, 30m, 8h): no trial is proposed that would not "
        "fit, running ones stop at their last epoch when it is spent, and the close-out "
        "(scores, registry, report) keeps 5%% of it (30 s to 10 min)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="retrain the top K configurations to the full budget (folds, or seeds) and "
        "compare them paired (default: the search file's confirm:, else 3)",
    )
    p.add_argument(
        "--no-confirm",
        action="store_true",
        help="no confirmation stage: the answer is the search's best, unconfirmed",
    )
    p.add_argument(
        "--decisions",
        choices=("fixed", "arrival"),
        help="fixed (default): Optuna's proposals and ASHA's stops follow the trials' order, "
        "so the same command gives the same answer; arrival: as results arrive (no waiting, "
        "not reproducible)",
    )
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
    if args.json:
        outputs.writable_file(args.json, "--json")
    for flag in ("trials", "max_epochs", "concurrency", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    if args.confirm is not None and args.no_confirm:
        raise ConfigError("--no-confirm: not with --confirm K")
    if args.confirm is not None and args.confirm < 1:
        raise ConfigError(f"--confirm {args.confirm}: must be at least 1 (or --no-confirm)")
    if args.folds is not None and args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: must be at least 2")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {args.gpus_per_trial}: must be at least 0")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m study.run`: the exit status (0, 1 when no trial succeeded, 3 when MLflow
    did not answer by the end, 130 when interrupted, 143 or 129 when SIGTERM or SIGHUP
    paused it, 75 when a disk filled: study.diskfull); a bad input raises ConfigError,
    which `run_cli` turns into exit 2."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what the parent records
    if args.list:
        quiet()
        list_searches()
        return 0
    status, _ = execute(args)
    return status


def execute(args: argparse.Namespace) -> tuple[int, Plan | None]:
    """Run the study parsed flags ask for, the command line's and the Python API's one
    path (study.api): its exit status and plan (None when refused before one was made)."""
    quiet()
    check_args(args)
    budget.driver_started()  # a time budget counts from here
    stops.reset()  # a driver that runs a second study (study.api) starts with none caught
    stops.install()  # SIGTERM and SIGHUP pause the study as Ctrl+C does
    with latched_interrupts():  # a Ctrl+C that Ray or Tune swallow still stops the study
        try:
            plan = make_plan(args)  # every check; nothing written yet
            # the lock before any write: of two invocations started at once, the one
            # refused has written nothing, not even the stores' tables
            lock = ledger.StudyLock(plan.optuna_url, plan.study_name).acquire()
            try:
                headline(plan)  # the first line: before the synthetic set is made, Ray starts
                plan = with_data(plan)
                storage = ledger.open_storage(plan.optuna_url)
                ran: list[Plan] = []  # the plan it ran (a --resume's: as its record says)
                status = run_study(open_tracking(plan), storage, ran)
                return status, (ran[-1] if ran else plan)
            finally:
                lock.release()
        except FlairsegError as err:  # a line that quotes a URL shows no password taken from it
            raise type(err)(secrets.scrub(str(err))) from None


def run_study(plan: Plan, storage: Any, ran: list[Plan] | None = None) -> int:
    """Open the invocation, run its trials, then summarise, score and report (the caller
    holds the study's lock). Once the parent run exists an error or Ctrl+C ends it (and
    the record) before it goes on up: nothing is left RUNNING."""
    # room set aside for a pause's writes (study.diskfull), before anything is opened
    diskfull.reserve([plan.results_root, plan.optuna_url, plan.mlflow_uri])
    try:
        opened = invocation.open_invocation(plan, storage)
    except BaseException:
        diskfull.release()
        raise
    if opened is None:  # nothing to run: nothing to set aside room for
        diskfull.release()
        return 0
    if ran is not None:
        ran.append(opened.plan)
    # --notify: its end is posted, however it ends (study.notify)
    return notify.around(opened, lambda: run_opened(plan, opened, storage))


def run_opened(plan: Plan, opened: invocation.Opened, storage: Any) -> int:
    """Run an opened invocation to its end: its exit status; an error or Ctrl+C ends it
    (and the record) before it goes on up."""
    try:
        ended = run_trials(opened, storage)
        diskfull.release()
    except BaseException as err:
        diskfull.release()  # room for the record of the end
        if isinstance(err, KeyboardInterrupt):  # it may have come inside a storage call
            ledger.release_connections(err)
        if not diskfull.is_full(err):
            invocation.end_early(opened, err)
            raise
        # a write of the driver's own found no room: a pause, as a trial's would be
        where = diskfull.where(err, [opened.record.path, plan.optuna_url, plan.mlflow_uri])
        stops.record(f"({diskfull.note(where)})", diskfull.EXIT_NO_SPACE)
        if not invocation.end_early(opened, KeyboardInterrupt()):  # its line unsaid
            print(
                f"interrupted {stops.caught()}: once there is room, finish this invocation "
                f"with\n  {opened.plan.resume_command}",
                file=sys.stderr,
            )
        return stops.exit_status()
    if isinstance(ended, int):  # interrupted, or MLflow away: recorded and said
        return ended
    line, ok = ended
    report = results.report_path(opened.record.path)
    plan = opened.plan
    results.write_report(
        plan.mlflow_uri, plan.experiment, plan.study_name, opened.parent_id, report
    )
    print(line)
    return 0 if ok else EXIT_NO_TRIAL_SUCCEEDED


def run_trials(opened: invocation.Opened, storage: Any) -> tuple[str, bool] | int:
    """Fit, summarise, score, write --json and end the invocation: its summary line and
    whether a trial succeeded; the exit status when a Ctrl+C interrupted it or MLflow
    did not answer by the end (recorded, said)."""
    from study import confirming  # Ray's Tune: imported once a study runs
    from study.callbacks import for_invocation

    plan = opened.plan  # a --resume runs what its record holds
    job = TuneJob(
        search=plan.search,
        data=opened.data,
        study_name=plan.study_name,
        storage=storage,
        path=opened.record.path,
        callbacks=for_invocation(opened),
        trials=opened.record.trials,
        # the sampler's seed moves with the study's history, so an extension does not replay
        seed=plan.seed + len(opened.study.trials),
        resume=plan.resume,
        speed=plan.speed,
        first_trial=opened.record.first_trial,
        study_seed=opened.record.seed,
    )
    tuner, gpus = make_tuner(job)
    banner(opened, gpus)
    start_budget(opened)
    seconds, stopped = fit(tuner)
    if not mlflow_caught_up(opened):
        return EXIT_MLFLOW_AWAY
    # a time budget that ended the search ends the invocation's trials (study.budget)
    if stopped or not (invocation.all_trials_ended(opened) or budget.ended()):
        invocation.mark_interrupted(opened)
        return stops.exit_status(EXIT_INTERRUPTED)
    if budget.cut():  # Tune stopped the running trials without telling the searcher
        ledger.stop_for_budget(opened.study)
    budget.confirming()
    confirmed = confirming.run(opened, gpus)  # the finalists retrained and compared
    if not mlflow_caught_up(opened):
        return EXIT_MLFLOW_AWAY
    if confirmed == "interrupted":
        invocation.mark_interrupted(opened)
        return stops.exit_status(EXIT_INTERRUPTED)
    invocation.close_strays(opened)
    summary = results.summarise(opened, seconds, scoring_device(gpus), confirmed)
    if results.succeeded(summary):
        summary["registry"] = register.after_study(opened)
    line = print_summary(summary, seconds, plan.mlflow_uri, plan.experiment)
    if plan.json_path:
        try:
            write_json(plan.json_path, summary)
        except OSError as err:
            why = f"{err.strerror or err}: {err.filename or plan.json_path}"
            raise ConfigError(f"--json {plan.json_path}: cannot write it ({why})") from None
    ok = results.succeeded(summary)
    check_interrupted()  # a Ctrl+C swallowed on the way still stops it, before it is done
    invocation.mark_done(opened, ok)
    return line, ok


def start_budget(opened: invocation.Opened) -> None:
    """The invocation's time budget, less what its interrupted drivers spent, and what the
    search must leave to the confirmation: its retraining, in epochs per running slot."""
    search = opened.plan.search
    asha = search.asha
    replicas = 1 if search.folds else search.confirm_seeds
    waves = math.ceil(search.confirm * replicas / search.concurrency)  # trials side by side
    budget.start(
        search.time_budget,
        spent_before=opened.record.budget_spent_s,
        grace=asha.grace_period if asha.enabled else asha.max_epochs,
        confirm_epochs=waves * asha.max_epochs,
        search_ended=opened.record.budget_ended_search,
    )


def mlflow_caught_up(opened: invocation.Opened) -> bool:
    """Whether the writes the trial logger kept while MLflow was away reached it; if not,
    the invocation is left for --resume (Optuna and Tune hold every trial's result) and a
    line says so. Nothing of MLflow is touched then: it does not answer."""
    plan = opened.plan
    done, where = outbox.caught_up(plan.mlflow_uri, opened.record.path)
    if not done:
        ledger.mark(opened.study, opened.record.number, "interrupted", **budget.paused())
        print(
            f"error: MLflow at {plan.mlflow_uri} does not answer: the trials ended, {where}; "
            f"when it answers, write them with: {plan.resume_command}",
            file=sys.stderr,
        )
    return done

"""What one invocation will run, settled from the flags and the search file.

`make_plan` checks everything a user can get wrong (storage, Ray address, search file,
study and experiment names, data folder, the MLflow store) and writes nothing; the
driver takes the study's lock and only then opens the MLflow experiment (`open_tracking`),
so of two invocations started at once the one refused has written nothing. A `--resume`
replaces the search, the MLflow target and the data with what the study's record holds
(see `invocation.resumed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flairseg.config import TrainConfig
from flairseg.data import cache_dir, load_slices
from flairseg.dataset import Dataset, make_dataset
from flairseg.engine import Speed
from flairseg.errors import ConfigError
from flairseg.folds import check_folds
from flairseg.phantom import PhantomSpec
from flairseg.speed import fuse_mode
from flairseg.train import default_data
from study import notify, outputs, schema, secrets, tracking
from study import search as searches

# flag (argparse dest) -> the search setting it overrides
OVERRIDE_FLAGS = {
    "trials": "trials",
    "max_epochs": "max_epochs",
    "concurrency": "concurrency",
    "cpus_per_trial": "cpus",
    "gpus_per_trial": "gpus",
    "image_size": "image_size",
    "epoch_scale": "epoch_scale",
    "folds": "folds",
    "decisions": "decisions",
    "confirm": "confirm",
    "time_budget": "time_budget",
}
MAX_STUDY_NAME = 100  # it names a folder, STUDY/run-N under --storage
MAX_EXPERIMENT_NAME = 500  # MLflow's own limit


@dataclass(frozen=True)
class Plan:
    """An invocation's settings: the merged search, where it logs, what the flags asked."""

    search: searches.Search  # the file merged with the profile and the flags
    profile: str  # laptop | full (what --profile auto resolved to)
    study_name: str
    resume: bool  # --resume: finish the interrupted invocation instead of adding one
    overrides: dict[str, Any]  # the flags that override the search, kept in the record
    data_flag: str | None  # --data as given; empty or None means the synthetic default
    loaded: tuple[Path, Dataset] | None  # the data, loaded to check it; None on a --resume
    results_root: str  # Tune's folder or URI; each invocation gets STUDY/run-N under it
    optuna_url: str
    mlflow_uri: str
    mlflow_uri_flag: str | None  # --mlflow-uri: on a --resume it beats the record's URI
    experiment: str
    experiment_flag: str | None  # --experiment: likewise
    experiment_id: str | None  # None until `open_tracking` (on a --resume, `resumed`)
    address: str | None  # a Ray cluster to join; None starts a fresh local Ray
    trials_flag: int | None  # --trials: caps a grid's remaining runs
    keep_concurrency: bool  # --concurrency was given: GPU packing must not raise it
    seed: int  # the sampler seed of the study's first trial
    speed: Speed  # how trials train (fast path, compile); never a hyperparameter
    status_every: float  # seconds between progress lines
    json_path: str | None  # --json: where the summary goes
    resume_command: str  # what a user types to finish this invocation if it is interrupted
    register: str | None = None  # the registered model the best model goes to (--register)
    # --notify or $FLAIRSEG_NOTIFY_URL (study.notify): a secret, kept out of any repr
    notify: str | None = dataclasses.field(default=None, repr=False)
    notify_format: str = "json"  # --notify-format: json or slack
    argv: tuple[str, ...] = ()  # the flags as given (study.api's, or the command line's)


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan for parsed, range-checked flags; raises ConfigError naming the flag."""
    notify_url = notify.from_args(args)  # first: a secret to mask in any line that follows
    storage_root, optuna_url = stores(args)
    if args.address:
        secrets.take(args.address, "--address")  # refused with a password: Ray reads its token
    probe_address(args.address)

    # the study's record decides what a --resume runs; a new invocation reads the file
    profile = resolve_profile(args.profile, args.address)
    overrides = overrides_from(args)
    search = searches.load(args.search, profile, overrides)
    study_name = args.study if args.study is not None else search.name
    check_study_name(study_name, args.study is not None, search.source)
    # check everything a user can get wrong before anything is written
    # the synthetic set, made on first use, is loaded after the run's first line (with_data)
    loaded = None if args.resume or to_generate(args.data) else load_data(args.data, search)
    if loaded is None and not args.resume:
        check_synthetic_split(search)  # what load_data checks, before the set is made
    uri = secrets.take(args.mlflow_uri or tracking.default_uri(), "--mlflow-uri")
    uri_flag = secrets.take(args.mlflow_uri, "--mlflow-uri") if args.mlflow_uri else None
    experiment = args.experiment if args.experiment is not None else search.name
    check_experiment_name(experiment, args.experiment is not None, search.source)
    outputs.check(storage_root, args.storage, optuna_url, uri)
    # a --resume logs where its invocation logged (read from the study's record later)
    if not args.resume:
        tracking.check_experiment(uri, experiment)
    return Plan(
        search=search,
        profile=profile,
        study_name=study_name,
        resume=bool(args.resume),
        overrides=overrides,
        data_flag=args.data,
        loaded=loaded,
        results_root=storage_root,
        optuna_url=optuna_url,
        mlflow_uri=uri,
        mlflow_uri_flag=uri_flag,
        experiment=experiment,
        experiment_flag=args.experiment,
        experiment_id=None,
        address=args.address,
        trials_flag=args.trials,
        keep_concurrency=args.concurrency is not None,
        seed=args.seed,
        speed=Speed(fast=not args.no_fast_path, compile=args.compile, fuse=fuse_mode(args.fuse)),
        status_every=args.status_every,
        json_path=args.json,
        resume_command=resume_command(args, study_name),
        register=registered_name(args, study_name),
        notify=notify_url,
        notify_format=getattr(args, "notify_format", None) or "json",
        argv=tuple(getattr(args, "argv", None) or sys.argv[1:]),
    )


def resume_command(args: argparse.Namespace, study_name: str) -> str:
    """What a user types to finish this invocation if it is interrupted."""
    from study.commands import python

    return secrets.command_line(
        ["--search", args.search, "--study", study_name, "--storage", args.storage]
        + (["--optuna-storage", args.optuna_storage] if args.optuna_storage else [])
        + (["--register", args.register] if getattr(args, "register", None) else [])
        + (["--no-register"] if getattr(args, "no_register", False) else [])
        # the URL never: command_line names its variable, "$FLAIRSEG_NOTIFY_URL"
        + (["--notify", args.notify] if getattr(args, "notify", None) else [])
        + (["--notify-format", "slack"] if getattr(args, "notify_format", "") == "slack" else [])
        + ["--resume"],
        python=python(),
    )


def registered_name(args: argparse.Namespace, study_name: str) -> str | None:
    """--register NAME, the study's name by default; None with --no-register."""
    from study.register import check_name

    if args.no_register:
        if args.register:
            raise ConfigError("--no-register: not with --register NAME")
        return None
    if args.register:
        return check_name(args.register, "--register")
    # a study name may hold what a models:/ URI cannot (/ : @ quotes): those become '-'
    return check_name(re.sub(r"[/:@'\"\x00-\x1f]", "-", study_name)[:256], "--study")


def open_tracking(plan: Plan) -> Plan:
    """The plan with its MLflow experiment opened (made if missing): the first write to
    MLflow, once the driver holds the study's lock. A --resume opens the one its record
    names instead (`invocation.resumed`)."""
    if plan.resume:
        return plan
    experiment_id = tracking.open_experiment(plan.mlflow_uri, plan.experiment)
    return dataclasses.replace(plan, experiment_id=experiment_id)


def check_study_name(name: str, given: bool, source: str) -> None:
    """A study name names a folder (STUDY/run-N under --storage) and is matched in MLflow
    filters: refused in one line naming --study, or the search file it defaulted from."""
    why = _why_bad_name(name, MAX_STUDY_NAME)
    if why is None and name in (".", ".."):
        why = "names a folder's parent or itself"
    if why is None and ("/" in name or "\\" in name):
        why = "holds / or \\ (it names a folder under --storage)"
    if why is None:
        try:
            schema.quote(name)
        except ConfigError:
            why = "holds both ' and \" (no MLflow filter can match it)"
    if why is not None:
        _refuse("--study", name, given, source, why)


def check_experiment_name(name: str, given: bool, source: str) -> None:
    """What MLflow refuses of an experiment name (empty, over 500 characters), and control
    characters, in one line naming --experiment before anything is written."""
    why = _why_bad_name(name, MAX_EXPERIMENT_NAME, dash=False)
    if why is not None:
        _refuse("--experiment", name, given, source, why)


def _why_bad_name(name: str, longest: int, dash: bool = True) -> str | None:
    """Why a name cannot be used: empty, too long, a control character, a leading '-'."""
    if not name:
        return "is empty"
    if len(name) > longest:
        return f"is {len(name)} characters long; at most {longest}"
    controls = [c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if controls:
        return f"holds the control character {controls[0]!r}"
    if dash and name.startswith("-"):
        return "starts with '-' (it would read as a flag)"
    return None


def _refuse(flag: str, name: str, given: bool, source: str, why: str) -> None:
    """The one line: the flag and the name, or where the default name came from."""
    shown = repr(name if len(name) <= 80 else name[:80] + "...")
    if given:
        raise ConfigError(f"{flag} {shown}: {why}")
    raise ConfigError(
        f"{flag} not given: its default, the search's name {shown} (from {source}), {why}; "
        f"give {flag} NAME"
    )


def stores(args: argparse.Namespace) -> tuple[str, str]:
    """The Tune folder or URI and Optuna's URL, each without its password: a password in a
    URL is taken out here, and from now on the study carries none (study.secrets)."""
    storage_root = results_root(secrets.take(args.storage, "--storage"))
    given = args.optuna_storage or os.environ.get("OPTUNA_STORAGE")
    optuna_url = secrets.take(given, "--optuna-storage") if given else None
    optuna_url = optuna_url or (
        f"sqlite:///{storage_root}/optuna.db" if "://" not in storage_root else None
    )
    if optuna_url is None:
        raise ConfigError(
            f"--storage {args.storage} is a URI: give --optuna-storage (a database URL)"
        )
    return storage_root, optuna_url


def results_root(storage: str) -> str:
    """--storage as Tune wants it: a URI unchanged, a folder made absolute."""
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).resolve())


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
    """`auto` is the laptop profile unless there is a GPU here or a cluster to join."""
    if profile != "auto":
        return profile
    return "full" if address or torch.cuda.is_available() else "laptop"


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The search settings the flags override (flags left unset keep the file's values)."""
    found = {
        key: getattr(args, flag)
        for flag, key in OVERRIDE_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "no_confirm", False):
        found["confirm"] = 0
    return found


def to_generate(data: str | None) -> bool:
    """No --data, and the synthetic default set (flairseg.train.default_data) not made yet."""
    return not data and not (cache_dir() / "data" / PhantomSpec().name()).exists()


def check_synthetic_split(search: searches.Search) -> None:
    """The split and --folds checks of `load_data` for the synthetic set not made yet: its
    patient count is known without it, so a bad one still ends before anything is written."""
    from flairseg.dataset import split_patients

    base = TrainConfig.from_dict(search.fixed)
    names = [f"patient{i}" for i in range(PhantomSpec().patients)]
    split = split_patients(names, base.val_fraction, base.test_fraction, base.split_seed)
    if search.folds is not None:
        check_folds(search.folds, len(split.train) + len(split.val))


def with_data(plan: Plan) -> Plan:
    """The plan with its data loaded: the synthetic set that `make_plan` left to generate
    (a --resume loads what its record names, later)."""
    if plan.resume or plan.loaded is not None:
        return plan
    return dataclasses.replace(plan, loaded=load_data(plan.data_flag, plan.search))


def load_data(data: str | None, search: searches.Search) -> tuple[Path, Dataset]:
    """The data folder and its dataset at the search's image size and split."""
    folder = Path(data) if data else default_data()
    if data and not folder.is_dir():
        raise ConfigError(f"--data {data}: no such folder")
    base = TrainConfig.from_dict(search.fixed)
    slices = load_slices(folder, base.image_size)
    data = make_dataset(slices, base)
    if search.folds is not None:
        check_folds(search.folds, len(data.split.train) + len(data.split.val))
    return folder, data

"""The tracking schema: every MLflow name the study writes and the report reads, in one place.

`study` writes runs through these names and `dashboards` reads them back, so the two
cannot drift apart. Structured values are stored as text with a writer and a reader
here: the split as JSON (older stores hold `str(dict)`, still read), the objective as
`"val_iou (max)"`. The module imports neither torch nor Ray/Optuna, and of flairseg only
the torch-free names of cross-validated scores (flairseg.cvkeys), so the report stays
light; mlflow itself is imported only when a client is made.

A cross-validated study (`--folds K`) logs the fold mean under the usual metric keys,
`val_iou_std` beside it and `fold1/val_iou` ... per fold, in the trial's one run; its
parent and trial runs carry Tag.FOLDS.

Layout (DESIGN.md): one experiment per search; per invocation a parent run (role study)
with the search's settings as params; per trial a nested child run (role trial) with
every training setting as a param, each sampled value again as `sampled.NAME`, every
epoch's metrics as a step, and tags for its model, loss, status and epochs.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flairseg.cvkeys import is_spread_key


class Tag:
    """Tag names. On every run: STUDY, SEARCH, ROLE, DATA_FINGERPRINT."""

    PARENT = "mlflow.parentRunId"  # a trial's parent run (MLflow's own nesting tag)
    ROLE = "role"  # Role.STUDY or Role.TRIAL
    STUDY = "study"
    SEARCH = "search"
    DATA_FINGERPRINT = "data_fingerprint"
    # the parent run (one per invocation of study.run)
    INVOCATION = "invocation"  # 1, 2, ... within the study
    DATA = "data"  # the data folder
    IMAGE_SIZE = "image_size"
    PROFILE = "profile"
    RESULTS = "results"  # the invocation's Tune folder
    OPTUNA_STORAGE = "optuna_storage"
    COMMAND = "command"  # the command line that reproduces the study
    SPLIT = "split"  # the patient split: dump_split / load_split
    BEST_TRIAL = "best_trial"
    BEST_RUN = "best_run"
    # what registering the best model did, one line: "flairseg-demo version 3: champion
    # (val_iou 0.812, +0.022 over version 2)"; set by study.register
    REGISTRY = "registry"
    # a trial run
    OPTUNA_TRIAL = "optuna_trial"  # the Optuna trial number
    RAY_TRIAL_ID = "ray_trial_id"
    MODEL = "model"
    LOSS = "loss"
    STATUS = "status"  # Status.*, or stopped_status(epoch)
    PLANNED_EPOCHS = "planned_epochs"  # epochs the trial would run without early stopping
    EPOCHS_LOGGED = "epochs_logged"  # the last epoch logged so far (a running trial)
    EPOCHS = "epochs"  # the epochs it ran, set when it ends
    STOPPED_AT_EPOCH = "stopped_at_epoch"
    CHECKPOINT = "checkpoint"  # where its last checkpoint lives
    RESUMED_FROM = "resumed_from_epoch"  # set when a trial went on from a checkpoint
    NODE_IP = "node_ip"  # where it trained
    FOLDS_TRAINED = "folds_trained"  # a cross-validated trial's fold models: fused or not
    DEVICE = "device"  # what a trial trained on: "cpu", or the GPU's name
    ERROR = "error"  # a failed trial's last traceback line
    TEST_SCORED = "test_scored"  # set on each model x loss group's best once scored on test
    FOLDS = "folds"  # K, on the parent and trial runs of a cross-validated study
    CONFIRMS = "confirms"  # a confirmation run: the Optuna number of the trial it retrains
    REPLICA = "replica"  # a confirmation run: its seed index (0..R-1), 0 with folds
    KEPT = "kept_checkpoint"  # a confirmation run that kept its search trial's last checkpoint
    CONFIRMED = "confirmed"  # the parent: "true" (finalists confirmed) or "false" (--no-confirm)
    ANSWER = "answer"  # the parent: the confirmed winner against the runner-up, in words


# MLflow 3's experiment kind: a study's experiment holds training runs, not GenAI traces, so
# the MLflow UI opens it on its runs (without it, on an empty traces overview)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class Role:
    """Values of Tag.ROLE."""

    STUDY = "study"
    TRIAL = "trial"
    CONFIRMATION = "confirmation"  # a finalist retrained to the full budget (study.confirm)


class Status:
    """Values of a trial's Tag.STATUS; a trial ASHA stopped has `stopped_status(epoch)`."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"  # its invocation was closed out
    INTERRUPTED = "interrupted"  # its invocation was interrupted and can be resumed
    STOPPED_PREFIX = "stopped"
    BUDGET_PREFIX = "stopped by the time budget"
    NOT_STARTED = "not started: the time budget ended first"  # Optuna only (FAIL)


class Param:
    """Param names of the parent run; a trial's params are its training settings."""

    SEARCH = "search"
    TRIALS = "trials"
    OBJECTIVE = "objective"  # dump_objective / load_objective
    MAX_EPOCHS = "max_epochs"
    GRACE_PERIOD = "grace_period"
    REDUCTION_FACTOR = "reduction_factor"
    CONCURRENCY = "concurrency"
    CPUS_PER_TRIAL = "cpus_per_trial"
    SAMPLER_SEED = "sampler_seed"
    PROFILE = "profile"
    FAST_PATH = "fast_path"
    COMPILE = "compile"
    DECISIONS = "decisions"  # fixed (in the trials' order) or arrival
    FOLDS = "folds"  # a cross-validated study's K (absent otherwise)
    TIME_BUDGET = "time_budget_s"  # the invocation's time budget in seconds (absent: none)
    SAMPLED_PREFIX = "sampled."  # on a trial: `sampled.NAME`, the value Optuna proposed


class Artifact:
    """Artifact paths, relative to the run's artifact root."""

    EVOLUTION_DIR = "evolution"  # a trial's val slices over the epochs: PNG strips and the .npz
    EVOLUTION = "evolution/evolution.npz"
    BEST_DIR = "best"  # the parent run: the best trial's weights
    BEST_CONFIG = "best_config.json"
    SEARCH = "search.json"
    SUMMARY = "summary.json"
    REPORT = "report.html"
    IMPORTANCE = "importance.json"  # the parent run: what mattered (study.importance)
    COMPARISON = "comparison.json"  # the parent run: the confirmed finalists compared paired
    FRONT = "front.json"  # the parent run: quality against cost, the front (study.front)


# Metric keys (DESIGN.md), the same in callbacks, Tune results, MLflow and JSON.
METRIC_KEYS = (
    "train_loss",
    "val_loss",
    "val_pixel_accuracy",
    "val_mean_accuracy",
    "val_iou",
    "val_dice",
    "val_volume_dice",
)

# The training settings every trial logs that are not a model's knobs (TrainConfig's
# fields less flairseg.config.MODEL_KEYS; a test keeps them equal). Any other trial param
# is a knob of the trial's model, so the report needs no list of knobs, nor torch.
BASE_PARAMS = (
    "model",
    "loss",
    "alpha",
    "lr",
    "batch_size",
    "epochs",
    "image_size",
    "channels",
    "seed",
    "augment",
    "val_fraction",
    "test_fraction",
    "split_seed",
)

# what a trial measures of each epoch besides its scores (study.trainable)
MEASURED = ("images_per_s", "peak_memory_mb", "gpu_util_percent")
# what a trial cost so far, per epoch (study.front: a search's second objective may be one)
COSTS = ("model_epochs", "training_seconds", "parameters", "inference_ms")


def costs(result: dict) -> dict[str, float]:
    """A Tune result's costs: training_seconds is Tune's `time_total_s` (the trial's wall
    time so far); the others the trial reports (study.trainable)."""
    found = {"training_seconds": result.get("time_total_s")}
    found |= {k: result.get(k) for k in COSTS if k != "training_seconds"}
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float)}


DEFAULT_METRIC, DEFAULT_MODE = "val_iou", "max"

# What mattered (study.importance), on the parent run: `importance.alpha` is alpha's share
# of the objective's variance, `cost_importance.alpha` its share of the epochs' (each
# ranking sums to 1); the name after the prefix is the Optuna parameter (`unet.depth`).
IMPORTANCE_PREFIXES = {"objective": "importance.", "cost": "cost_importance."}


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial logs of an epoch's result: the metric keys and, when it is
    cross-validated, their spread and per-fold values (flairseg.cvkeys names)."""
    return {k: v for k, v in result.items() if k in METRIC_KEYS or is_spread_key(k, METRIC_KEYS)}


def is_model_knob(param: str) -> bool:
    """Whether a trial param is a knob of its model (not a base setting, not `sampled.*`)."""
    return param not in BASE_PARAMS and not param.startswith(Param.SAMPLED_PREFIX)


def stopped_status(epoch: int) -> str:
    """The status of a trial ASHA stopped after `epoch` epochs: `stopped at epoch 3`."""
    return f"{Status.STOPPED_PREFIX} at epoch {epoch}"


def budget_status(epoch: int) -> str:
    """The status of a trial the time budget stopped (study.budget): `stopped by the time
    budget at epoch 3` (a stopped status: it counts with its last value, as ASHA's do)."""
    return f"{Status.BUDGET_PREFIX} at epoch {epoch}"


def is_budget_stopped(status: str) -> bool:
    return status.startswith(Status.BUDGET_PREFIX)


def is_stopped(status: str) -> bool:
    return status.startswith(Status.STOPPED_PREFIX)


def is_scored(status: str) -> bool:
    """Whether a trial with this status ended with scores: completed or stopped early."""
    return status == Status.COMPLETED or is_stopped(status)


def dump_split(split: Mapping[str, Sequence[str]]) -> str:
    """The patient split `{"train": [...], "val": [...], "test": [...]}` as JSON text."""
    return json.dumps({str(part): [str(p) for p in ids] for part, ids in split.items()})


def load_split(text: str) -> dict[str, list[str]]:
    """The split from its tag: JSON, or the older `str(dict)` form; ValueError if neither."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)  # a Python literal, never evaluated as code
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"split {text[:80]!r}: neither JSON nor a Python dict") from None
    if not isinstance(value, dict) or not all(
        isinstance(ids, list | tuple) and all(isinstance(p, str) for p in ids)
        for ids in value.values()
    ):
        raise ValueError(f"split {text[:80]!r}: not a mapping of part to patient IDs")
    return {str(part): list(ids) for part, ids in value.items()}


def dump_objective(metric: str, mode: str) -> str:
    """The objective as the parent run's param: `val_iou (max)`."""
    return f"{metric} ({mode})"


def load_objective(text: str | None) -> tuple[str, str]:
    """(metric, mode) from the param `val_iou (max)`; a missing param is val_iou, max."""
    if not text:
        return DEFAULT_METRIC, DEFAULT_MODE
    metric, _, mode = text.strip().partition(" ")
    return metric, mode.strip().strip("()") or DEFAULT_MODE


def default_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store a bare `mlflow ui` here shows."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client(uri: str) -> Any:
    """An MlflowClient on `uri` (mlflow is imported here, on first use)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_named(c: Any, uri: str, name: str) -> Any:
    """The experiment `name` in the store at `uri`; a store that cannot be read or an
    unknown name is a ConfigError in one line."""
    from flairseg.errors import ConfigError

    try:
        exp = c.get_experiment_by_name(name)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--mlflow-uri {uri}: cannot read the tracking store ({first[:200]})"
        ) from None
    if exp is None:
        raise ConfigError(f"--experiment {name}: no such experiment in {uri}")
    return exp


def search_runs(c: Any, experiment_id: str, query: str) -> list:
    """Every run of the experiment that matches `query`, page by page (1000 a page)."""
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def quote(value: str, flag: str = "--study") -> str:
    """`value` as a string of MLflow's filter grammar, which has no escapes: in single
    quotes, or in double quotes when it holds a single quote (a backslash is plain). A
    value with both kinds cannot be written: ConfigError naming `flag`, where it came from."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    from flairseg.errors import ConfigError  # here: the schema takes no more of flairseg

    raise ConfigError(f"{flag} {value[:80]!r}: may hold ' or \" but not both")


def study_query(
    study: str | None = None, role: str | None = None, status: str | None = None
) -> str:
    """The MLflow filter for runs of `study` (any study if None), a role and a run status;
    every value is quoted (`quote`), so a study named o'brien is found."""
    terms = []
    if study is not None:
        terms.append(f"tags.{Tag.STUDY} = {quote(study)}")
    if role:
        terms.append(f"tags.{Tag.ROLE} = {quote(role)}")
    if status:
        terms.append(f"attributes.status = {quote(status)}")
    return " and ".join(terms)


def study_runs(
    c: Any,
    experiment_id: str,
    study: str | None,
    role: str | None = None,
    status: str | None = None,
) -> list:
    """All runs of `study` (every study's if None), optionally of one role and run status."""
    return search_runs(c, experiment_id, study_query(study, role, status))

"""MLflow: one parent run per invocation, one nested child run per trial, logged from the driver.

Everything goes through an `MlflowClient` on the driver, so trials need no access to
the tracking server (a cluster whose workers cannot reach it still logs). A child is
found again by its study and Optuna trial number, so a resumed trial keeps logging
into its own run: no duplicate runs, and no run is left RUNNING once a study ends,
is interrupted, or is closed out.

The names of every tag, param and artifact, the stored forms of the split and the
objective, and the paged run search live in the torch-free `study.schema`, which the
report reads through too; this module adds what needs the training code (TrainConfig).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flairseg.config import TrainConfig
from flairseg.errors import ConfigError
from flairseg.models import model_defaults, model_keys
from study import ledger, schema
from study.schema import METRIC_KEYS, Role, Status, Tag, client, default_uri

__all__ = [
    "METRIC_KEYS",
    "check_experiment",
    "client",
    "close_out",
    "default_uri",
    "log_json",
    "log_metrics",
    "open_experiment",
    "run_name",
    "study_runs",
    "trial_params",
]


@contextlib.contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the block (MLflow reads its own per request)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quick_failures(seconds: int = 10) -> contextlib.AbstractContextManager[None]:
    """Fail fast on an unreachable server instead of MLflow's minutes of retries: no
    retries, `seconds` per request."""
    return env(
        {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(seconds)}
    )


def artifact_root(db: Path | None, name: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: `mlruns/NAME` beside
    the database, whatever folder the study runs in (MLflow's default, `./mlruns`, follows
    the working folder). None for a server or a database server: its own default."""
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "experiment"
    return (db.resolve().parent / "mlruns" / slug).as_uri()


def check_experiment(uri: str, name: str) -> None:
    """What `open_experiment` would refuse, found without writing: a SQLite store's missing
    folder, an unreachable server, a deleted experiment (a new SQLite file is not made)."""
    _experiment(uri, name, create=False)


def open_experiment(uri: str, name: str) -> str:
    """The id of experiment `name` (created if missing); an unreachable store exits 2."""
    found = _experiment(uri, name, create=True)
    assert found is not None
    return found


def _experiment(uri: str, name: str, create: bool) -> str | None:
    """The experiment's id, made when `create`; None when it is missing and not made.
    A SQLite store is opened under `ledger.creation_lock`: two drivers that make the same
    new file at once would both run MLflow's migrations into it."""
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None:
        if not db.parent.is_dir():
            raise ConfigError(f"--mlflow-uri {uri}: folder {db.parent} does not exist")
        if not create and not db.exists():
            return None  # nothing to check in it yet, and opening it would make it
    try:
        with ledger.creation_lock(db) if db else contextlib.nullcontext(), quick_failures():
            c = client(uri)
            exp = c.get_experiment_by_name(name)
            if exp is None:
                if not create:
                    return None
                try:
                    return c.create_experiment(
                        name,
                        artifact_location=artifact_root(db, name),
                        tags=dict([schema.EXPERIMENT_KIND]),
                    )
                except Exception:  # created by a concurrent invocation in between
                    exp = c.get_experiment_by_name(name)
                    if exp is None:
                        raise
            if exp.lifecycle_stage == "deleted":
                raise ConfigError(
                    f"--experiment {name}: the experiment is deleted in {uri}; restore it "
                    "(`mlflow experiments restore`) or name another"
                )
            key, kind = schema.EXPERIMENT_KIND
            if create and key not in exp.tags:  # one an older version of this project made
                c.set_experiment_tag(exp.experiment_id, key, kind)
            return exp.experiment_id
    except ConfigError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        refused = _refused_login(first)
        if refused:
            raise ConfigError(f"--mlflow-uri {uri}: {refused}") from None
        raise ConfigError(
            f"--mlflow-uri {uri}: cannot reach the tracking store ({first[:200]})"
        ) from None


def _refused_login(error: str) -> str | None:
    """What to do when an MLflow server with a login (its basic-auth app) said no."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if "error code 401" in error:
        if not user:
            return (
                "the tracking server wants a login: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD"
            )
        return f"the tracking server refused user {user} (check MLFLOW_TRACKING_PASSWORD)"
    if "error code 403" in error:
        return (
            f"user {user} may not write here: an admin must grant it EDIT on the experiment "
            "(or MANAGE), or name another --experiment"
        )
    return None


def trial_params(config: TrainConfig) -> dict[str, Any]:
    """Flat params with every knob of the trial's model resolved (presets spelt out)."""
    values = config.to_dict()
    every_knob = set(model_keys())  # of every model: another model's knobs are left out
    out = {k: v for k, v in values.items() if k not in every_knob}
    for key, preset in model_defaults(config.model).items():
        out[key] = values[key] if values[key] is not None else preset
    return out


def run_name(number: int, config: TrainConfig, sampled: dict[str, Any]) -> str:
    """`#3 unet combo alpha=0.62 lr=1.2e-03`: model, loss and the sampled values."""
    parts = [f"#{number}", config.model, config.loss]
    for key, value in sampled.items():
        short = key.split(".")[-1]
        if short in ("model", "loss", "run"):
            if short == "run":
                parts.append(str(value))
            continue
        if isinstance(value, float):
            text = f"{value:.2e}" if short == "lr" else f"{value:.3g}"
        else:
            text = str(value)
        parts.append(f"{short}={text}")
    return " ".join(parts)


def study_runs(
    c, experiment_id: str, study: str, role: str | None = None, status: str | None = None
) -> list:
    """All runs of `study` in the experiment (paged), optionally of one role and status."""
    return schema.study_runs(c, experiment_id, study, role, status)


def close_out(
    uri: str, experiment_id: str, study: str, reason: str = Status.KILLED, keep: str | None = None
) -> int:
    """Mark every RUNNING run of `study` but `keep` KILLED (tag status=reason); returns how many."""
    c = client(uri)
    n = 0
    for run in study_runs(c, experiment_id, study, status="RUNNING"):
        if run.info.run_id == keep:
            continue
        if run.data.tags.get(Tag.ROLE) == Role.TRIAL:
            c.set_tag(run.info.run_id, Tag.STATUS, reason)
        c.set_terminated(run.info.run_id, status="KILLED")
        n += 1
    return n


def log_json(c, run_id: str, payload: Any, name: str) -> None:
    """`payload` as the JSON artifact `name` of the run (schema.Artifact names them)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, name)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        c.log_artifact(run_id, str(path))


def log_metrics(
    c,
    run_id: str,
    metrics: dict[str, float],
    step: int | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Metrics (and tags) in one request per 900 metrics: the driver's per-epoch write."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
    for start in range(0, max(len(batch), 1), 900):
        c.log_batch(run_id, metrics=batch[start : start + 900], tags=run_tags if start == 0 else [])

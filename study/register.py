"""A study's best model in the MLflow model registry: a new version, champion or challenger.

At the end of an invocation (`study.cli`) or later by hand (`python -m study.register
--study NAME`, `study.register_cli`), the best config's weights that the parent run holds
(`best/state.pt`; the fold ensemble for a cross-validated study) are logged on the parent
run as an MLflow model of the pytorch flavor (`flairseg.served.Served`: raw slices of one
patient in, probabilities out; signature and a zero input example: no patient's image goes
into the registry; the checkpoint itself rides along as `extra_files/state.pt`, which
`flairseg.predict --model` reads) and registered as the next version of a registered model
named after the study.

Champion or challenger: versions compare only on the same objective, data (fingerprint,
image size, channels), split and folds: their `comparable` key. Among the versions with
the key of the current `champion`, a new version takes `champion` when its val score beats
the champion's, else it gets `challenger`. A version of another key never takes
`champion` from one it cannot be compared with: its key's own aliases are
`champion-KEY8` / `challenger-KEY8` (the key's first 8 hex digits), and it says why.
What happened, in one line, goes on the parent run (Tag.REGISTRY), the console and report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flairseg.errors import ArgumentParser, ConfigError, run_cli
from study import schema, secrets, tracking
from study.commands import python
from study.schema import Artifact, Param, Role, Tag

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_NAME = "model"  # the logged model's name on the parent run
PREFIX = "flairseg."  # the tags this module puts on versions and registered models


@dataclass(frozen=True)
class Best:
    """What a parent run says about the study's best model."""

    parent_id: str
    experiment_id: str
    study: str
    invocation: str
    trial: str
    metric: str
    mode: str
    score: float
    scores: dict[str, float]  # val_* and test_* of the best config, as the parent logged them
    config: dict[str, Any]
    fingerprint: str
    split: str
    folds: str
    answer: str = ""  # the confirmed winner against the runner-up, in words (study.confirm)

    @property
    def key(self) -> str:
        """What two versions must share to be compared: objective, data, split, folds."""
        text = json.dumps(
            [self.metric, self.mode, self.fingerprint, self.config.get("image_size"),
             self.config.get("channels"), self.split, self.folds]
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()

    def version_tags(self) -> dict[str, str]:
        tags = {
            "study": self.study, "invocation": self.invocation, "trial": self.trial,
            "objective": schema.dump_objective(self.metric, self.mode),
            "score": repr(self.score), "config": json.dumps(self.config, sort_keys=True),
            "data_fingerprint": self.fingerprint, "split": self.split, "comparable": self.key,
            "parent_run": self.parent_id,
        } | {k: f"{v:.6g}" for k, v in self.scores.items()}  # fmt: skip
        # `score` exact (repr): the next version is compared with it; the rest for people
        if self.folds:
            tags["folds"] = self.folds
        if self.answer:
            tags["answer"] = self.answer
        return {PREFIX + k: v[:5000] for k, v in tags.items()}


@dataclass(frozen=True)
class Outcome:
    version: str
    alias: str
    line: str  # what happened, for the console, the parent run and the report


def best_of(c: Any, parent: Any) -> Best:
    """The best model a parent run describes; a ConfigError says what it lacks."""
    tags, metrics = parent.data.tags, parent.data.metrics
    metric, mode = schema.load_objective(parent.data.params.get(Param.OBJECTIVE))
    name = parent.info.run_name
    if Tag.BEST_TRIAL not in tags or metric not in metrics:
        raise ConfigError(f"run {name}: no best trial was scored (no trial succeeded?)")
    with tempfile.TemporaryDirectory() as folder:
        path = c.download_artifacts(parent.info.run_id, Artifact.BEST_CONFIG, folder)
        config = json.loads(Path(path).read_text())
    return Best(
        parent_id=parent.info.run_id,
        experiment_id=parent.info.experiment_id,
        study=tags.get(Tag.STUDY, ""),
        invocation=tags.get(Tag.INVOCATION, ""),
        trial=tags[Tag.BEST_TRIAL],
        metric=metric,
        mode=mode,
        score=float(metrics[metric]),
        scores={k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))},
        config=config,
        fingerprint=tags.get(Tag.DATA_FINGERPRINT, ""),
        split=tags.get(Tag.SPLIT, ""),
        folds=tags.get(Tag.FOLDS, ""),
        answer=tags.get(Tag.ANSWER, ""),
    )


def register(uri: str, c: Any, parent: Any, name: str) -> Outcome:
    """Log the parent run's best model, register it as the next version of `name`, move
    the aliases, and record the outcome on the parent run."""
    with tracking.env({"MLFLOW_TRACKING_URI": uri}):  # the registry finds the model there
        return _register(uri, c, best_of(c, parent), name)


def _register(uri: str, c: Any, best: Best, name: str) -> Outcome:
    same = _same_trial(c, name, best)
    if same is not None:  # a search leaves a version's aliases out: read it whole
        same = c.get_model_version(name, str(same.version))
    if same is not None and same.aliases:  # an earlier invocation's best is still the best
        line = f"{name}: the best trial (#{best.trial}) is version {same.version} already"
        c.set_tag(best.parent_id, Tag.REGISTRY, line)
        return Outcome(str(same.version), "", line)
    if same is not None:  # registered, but a failure came before its alias: give it one
        alias, line = _move_aliases(c, name, str(same.version), best)
        c.set_tag(best.parent_id, Tag.REGISTRY, line)
        return Outcome(str(same.version), alias, line)
    model_id = log_model(uri, c, best)
    version = _new_version(c, name, best, model_id)
    alias, line = _move_aliases(c, name, version, best)
    c.set_tag(best.parent_id, Tag.REGISTRY, line)
    return Outcome(version, alias, line)


def log_model(uri: str, c: Any, best: Best) -> str:
    """The best weights as an MLflow pytorch model on the parent run; its model id."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    import flairseg
    from flairseg.checkpoint import load_checkpoint, model_from_checkpoint
    from flairseg.served import Served

    with tempfile.TemporaryDirectory() as folder:
        state = c.download_artifacts(best.parent_id, f"{Artifact.BEST_DIR}/state.pt", folder)
        config, model = model_from_checkpoint(load_checkpoint(state))
        served = Served(model).eval()
        size, channels = config.image_size, config.channels
        example = np.zeros((1, channels, size, size), np.float32)  # no patient's image
        with torch.no_grad():
            out = served(torch.from_numpy(example)).numpy()
        # the model belongs to the parent's experiment (MLflow would put it in the
        # session's default experiment, not the source run's)
        where = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": best.experiment_id}
        with tracking.env(where):
            info = mlflow.pytorch.log_model(
                served,
                name=MODEL_NAME,
                run_id=best.parent_id,
                signature=infer_signature(example, out),
                input_example=example,
                code_paths=[_fresh_copy(Path(flairseg.__file__).parent, Path(folder))],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                extra_files=[state],
                # a pickled module keeps the batch size free (pt2, torch.export, fixes it
                # to the example's); flairseg travels in code_paths, so it unpickles anywhere
                serialization_format="pickle",
                tags={PREFIX + "study": best.study, PREFIX + "trial": best.trial},
            )
    return info.model_id


def _fresh_copy(package: Path, folder: Path) -> str:
    """The package's .py files written anew under `folder`: MLflow copies code with its
    modes, and the files of a study are private (created under its umask), not 0644."""
    for source in package.rglob("*.py"):
        target = folder / package.name / source.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    return str(folder / package.name)


def _new_version(c: Any, name: str, best: Best, model_id: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, tags={PREFIX + "study": best.study})
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = c.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=best.parent_id,
        tags=best.version_tags(),
        model_id=model_id,
        description=f"study {best.study} #{best.invocation}, trial #{best.trial}",
    )
    return str(mv.version)


def _alias_version(c: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _same_trial(c: Any, name: str, best: Best) -> Any | None:
    """A version of `name` that is this study's same best trial on the same key."""
    from mlflow.exceptions import MlflowException

    query = f"name = {schema.quote(name, '--register')}"
    try:
        versions = c.search_model_versions(query)
    except MlflowException:
        return None
    for mv in versions:
        t = mv.tags
        if (t.get(PREFIX + "study"), t.get(PREFIX + "trial"), t.get(PREFIX + "comparable")) == (
            best.study, best.trial, best.key
        ):  # fmt: skip
            return mv
    return None


def _move_aliases(c: Any, name: str, version: str, best: Best) -> tuple[str, str]:
    """The alias the new version gets, and the line that says why."""
    head = f"{name} version {version}"
    score = f"{best.metric} {best.score:.4f}"
    champion = _alias_version(c, name, CHAMPION)
    suffix, why = "", ""
    if champion is not None and champion.tags.get(PREFIX + "comparable") != best.key:
        suffix = "-" + best.key[:8]
        why = f"not compared with {CHAMPION} version {champion.version} ({_differs(champion, best)}); "
        champion = _alias_version(c, name, CHAMPION + suffix)
    if champion is None:
        c.set_registered_model_alias(name, CHAMPION + suffix, version)
        return CHAMPION + suffix, f"{head}: {why}{CHAMPION + suffix} ({score}, the first)"
    theirs = float(champion.tags.get(PREFIX + "score", "nan"))
    better = best.score > theirs if best.mode == "max" else best.score < theirs
    delta = f"{best.score - theirs:+.4f} against version {champion.version}"
    alias = (CHAMPION if better else CHALLENGER) + suffix
    c.set_registered_model_alias(name, alias, version)
    return alias, f"{head}: {why}{alias} ({score}, {delta})"


def _differs(champion: Any, best: Best) -> str:
    """In a few words, why a version cannot be compared with the champion."""
    t = champion.tags
    if t.get(PREFIX + "objective") != schema.dump_objective(best.metric, best.mode):
        return f"another objective: {t.get(PREFIX + 'objective')}"
    if t.get(PREFIX + "data_fingerprint") != best.fingerprint:
        theirs = t.get(PREFIX + "data_fingerprint", "?")[:12]
        return f"other data: {best.fingerprint[:12]} against {theirs}"
    if t.get(PREFIX + "split") != best.split or t.get(PREFIX + "folds", "") != best.folds:
        return "another split"
    return "another image size or channels"


# -- at the end of a study, and by hand ------------------------------------------------


def after_study(opened: Any) -> str | None:
    """Register the invocation's best model (`opened`: study.invocation.Opened); the line
    that says what happened. A failure never fails a study that trained: one warning line
    with the command that finishes the step."""
    plan = opened.plan
    name = plan.register
    if not name:
        return None
    try:
        with _quiet_mlflow():
            outcome = register(plan.mlflow_uri, opened.client, opened.client.get_run(
                opened.parent_id), name)  # fmt: skip
    except Exception as err:
        first = secrets.first_line(err)
        again = ["--study", plan.study_name, "--experiment", plan.experiment,
                 "--invocation", str(opened.record.number), "--mlflow-uri", plan.mlflow_uri]  # fmt: skip
        again += ["--register", name] if name != plan.study_name else []
        print(
            f"warning: the best model was not registered ({first}); register it with: "
            f"{secrets.command_line(again, 'study.register', python())}",
            flush=True,
        )
        return None
    return outcome.line


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No progress bars and no pickle caution on the study's console (the registered model
    is read back by `flairseg.predict` from its checkpoint, with `weights_only=True`)."""
    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with tracking.env({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            yield
    finally:
        logger.setLevel(level)


def check_name(name: str, flag: str) -> str:
    """A registered model's name as `models:/NAME@alias` can carry it; else one line."""
    bad = [ch for ch in "/:@'\"" if ch in name] or [ch for ch in name if ord(ch) < 32]
    if not name or len(name) > 256 or bad:
        why = f"holds {bad[0]!r}" if bad else "must be 1 to 256 characters"
        raise ConfigError(
            f"{flag} {name!r}: not a registered model name ({why}); give --register NAME"
        )
    return name


def parent_runs(c: Any, study: str, experiment: str | None) -> list:
    """The study's parent runs (newest invocation first), in one experiment or in all."""
    if experiment is not None:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"--experiment {experiment}: no such experiment")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in c.search_experiments()]
    runs = [r for i in ids for r in schema.study_runs(c, i, study, Role.STUDY)]
    return sorted(runs, key=lambda r: int(r.data.tags.get(Tag.INVOCATION, "0") or 0), reverse=True)


def build_parser() -> ArgumentParser:
    """The command line's flags (the documentation's CLI reference is made from it)."""
    p = ArgumentParser(prog="python -m study.register", description=main.__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="the study whose best model to register")
    p.add_argument("--experiment", help="its MLflow experiment (default: search them all)")
    p.add_argument("--invocation", type=int, help="which invocation (default: the last scored)")
    p.add_argument(
        "--mlflow-uri",
        help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    p.add_argument(
        "--register", metavar="NAME", help="registered model (default: the study's name)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m study.register --study NAME`: register the best model of the study's last
    invocation (or `--invocation N`), as the end of `study.run` does."""
    p = build_parser()
    args = p.parse_args(argv)
    name = check_name(args.register or args.study, "--register" if args.register else "--study")
    uri = secrets.take(args.mlflow_uri or tracking.default_uri(), "--mlflow-uri")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--mlflow-uri {uri}: no MLflow store there (give the study's)")
    tracking.check_experiment(uri, args.experiment or "Default")  # reachable, one line if not
    c = tracking.client(uri)
    runs = parent_runs(c, args.study, args.experiment)
    if args.invocation is not None:
        runs = [r for r in runs if r.data.tags.get(Tag.INVOCATION) == str(args.invocation)]
    scored = [r for r in runs if Tag.BEST_TRIAL in r.data.tags]
    if not scored:
        where = f" invocation #{args.invocation}" if args.invocation else ""
        raise ConfigError(
            f"--study {args.study}:{where} no invocation with a scored best model in {secrets.scrub(uri)}"
        )
    parent = scored[0]
    if Tag.REGISTRY in parent.data.tags:
        print(f"already registered: {parent.data.tags[Tag.REGISTRY]}")
        return 0
    try:
        with _quiet_mlflow():
            outcome = register(uri, c, parent, name)
    except ConfigError:
        raise
    except Exception as err:  # a refusal, an outage, a missing artifact: one line
        raise ConfigError(
            f"--study {args.study}: not registered ({secrets.first_line(err)})"
        ) from None
    print(outcome.line)
    return 0


if __name__ == "__main__":
    run_cli(main)
